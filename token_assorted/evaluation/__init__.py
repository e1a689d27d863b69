"""Evaluation of saved models: accuracy and tokens, the probes of the latent tokens, the claim checks, the
report, latent spans explained as text, prompts for servers."""
