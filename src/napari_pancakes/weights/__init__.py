"""Bundled model weights (safetensors) and their model cards."""
