"""Answering: batched generation (greedy or top-k), Coconut's continuous-thought loop, the logits
processors that probe the latent codes, and scoring an in-memory model on examples (what training's validation
and `eval` share)."""
