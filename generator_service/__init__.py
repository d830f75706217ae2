"""The generator service: a causal LM behind /v1/generate, with prompt fitting and batching."""
