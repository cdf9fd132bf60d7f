"""Training: config schema, the accelerate loop, checkpoints, logging."""
