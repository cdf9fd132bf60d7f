"""Benchmarks and judges: GenEval rules, the ShapesWorld judge."""
