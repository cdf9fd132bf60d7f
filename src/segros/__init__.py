"""segros: fine-tune unified multimodal models with Semantically-Grounded Supervision (arXiv 2603.19807)."""

__version__ = "0.1.0"
