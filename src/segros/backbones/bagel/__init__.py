"""BAGEL (Qwen2 mixture-of-transformers + SigLIP-NaViT + FLUX VAE, rectified flow) as a segros backbone."""
