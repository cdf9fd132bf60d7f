"""Which modules of a backbone are its repeated transformer blocks: the unit ``run.compile``
compiles one by one (as torchtune does) and FSDP wraps. A mixin of
:class:`~segros.backbones.base.Backbone`; an adapter only names the block classes it defines
itself (``block_classes``)."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from torch import nn


class CompileUnits:
    """:meth:`transformer_blocks` from ``block_classes`` and the submodels' ``_no_split_modules``."""

    __slots__ = ()  # a mixin of an nn.Module: adds no instance layout (FSDP2 swaps the class)

    #: class names of the repeated transformer blocks the adapter defines itself; the blocks of
    #: Hugging Face and diffusers submodels are found through their ``_no_split_modules``
    block_classes: ClassVar[tuple[str, ...]] = ()

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated transformer blocks that hold trainable parameters, outermost only, in
        module order. Frozen towers (a VAE, a frozen LLM) are left out."""
        names = set(self.block_classes)
        for module in self.modules():
            names.update(getattr(module, "_no_split_modules", None) or ())
        blocks: list[nn.Module] = []
        inside: list[str] = []  # prefixes of the blocks already taken
        for path, module in self.named_modules():
            if type(module).__name__ not in names or any(path.startswith(p) for p in inside):
                continue
            if any(param.requires_grad for param in module.parameters()):
                blocks.append(module)
                inside.append(path + ".")
        # repeated: a class seen once (diffusers lists SANA's patch embedding too) is no block stack
        kinds = Counter(type(b) for b in blocks)
        return [b for b in blocks if kinds[type(b)] > 1]
