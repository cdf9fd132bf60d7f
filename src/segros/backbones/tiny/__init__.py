"""TinyUMM: a tiny Show-o-like unified model over text tokens and discrete image codes."""
