"""The application layer: commands built on the library, which nothing below imports.

- :mod:`~segros.apps.demo`: ``segros demo``, SFT vs RecA vs SeGroS on ShapesWorld end to end;
- :mod:`~segros.apps.report`: the demo's report (Markdown and HTML);
- :mod:`~segros.apps.pretrain`: ``segros pretrain``, the TinyUMM the demo starts from;
- :mod:`~segros.apps.inspection`: ``segros inspect``, the grounding of one image and caption.

``tests/test_architecture.py`` checks the layering: no import cycle in ``segros``, no module
outside this package (and the ``segros`` command's dispatcher) importing it, and no module
named like a standard-library one.
"""
