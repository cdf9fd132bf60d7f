"""Model backbones that SeGroS fine-tunes."""
