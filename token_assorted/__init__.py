"""token-assorted: mixing discrete latent tokens with text tokens in LM reasoning.

Reference implementation of Token Assorted (Su et al., arXiv 2502.03275):
stage 1 learns a VQ-VAE codebook over chunks of reasoning-trace tokens, stage 2
trains a causal LM on traces whose first m tokens are replaced by latent tokens.
"""

__version__ = "0.1.0"
