"""OpenUni (InternVL3 + learnable queries + connector + SANA on DC-AE latents) as a segros backbone."""
