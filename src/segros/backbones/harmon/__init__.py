"""Harmon (Qwen2.5 + MAR + KL-16 VAE) behind the segros backbone protocol; see ``adapter.py``."""
