"""Training and evaluation data: ShapesWorld, file readers, ordering and sources."""
