"""Show-o (Phi-1.5 + MAGVIT-v2, optionally CLIP-ViT) behind the segros backbone protocol (paper Table 1)."""
