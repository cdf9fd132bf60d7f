"""Datasets: ShapesWorld and readers."""
