"""Images in and out of the pre-encoded cache (``segros cache``, :mod:`segros.data.cache`): the
CPU part of image preparation, the frozen encoders' part, and what the cache stores.

A mixin of :class:`~segros.backbones.base.Backbone`. An adapter implements ``pixel_fields``
(always: :meth:`~segros.backbones.base.Backbone.collate_t2i` reads it) and, where frozen encoders
run outside the forward, ``encode_pixels``; ``image_encoders`` (and ``cache_fields`` when the
encoder runs in the forward) only to support the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# Image fields of a batch by name, as encode_images returns them ("images", the display pixels,
# and the backbone's own encodings); the cache stores them.
ImageFields = dict[str, torch.Tensor]


class ImageCache:
    """Image preparation split at the loader's process boundary, and the cache's fields."""

    __slots__ = ()  # a mixin of an nn.Module: adds no instance layout (FSDP2 swaps the class)

    def pixel_fields(self, images: Sequence[Any]) -> ImageFields:
        """The CPU part of image preparation: ``"images"`` (B, H, W, 3) uint8 at the model's size
        (the display pixels, and what :meth:`encode_pixels` reads) and any other pixel transform
        the model reads (Show-o's CLIP input, Harmon's [-1, 1] pixels). Runs in loader workers."""
        raise NotImplementedError(f"{type(self).__name__} does not support the image cache")

    def encode_pixels(self, fields: ImageFields) -> ImageFields:
        """The device part: ``fields`` plus what the frozen encoders compute from them (codes), on
        the device of ``fields["images"]``. None by default (encoders that run in the forward)."""
        return fields

    def encode_images(self, images: Sequence[Any]) -> ImageFields:
        """The image fields of a t2i batch from PIL images: :meth:`encode_pixels` of
        :meth:`pixel_fields` (frozen encoders only)."""
        return self.encode_pixels(self.pixel_fields(images))

    def cache_fields(self, images: Sequence[Any]) -> ImageFields:
        """What ``segros cache`` stores per image: :meth:`encode_images` without the display
        images (``"images"``); a backbone whose encoder runs in the forward stores its output."""
        return {k: v for k, v in self.encode_images(images).items() if k != "images"}

    def image_encoders(self) -> dict[str, Any]:
        """The frozen image encoder(s) behind :meth:`cache_fields` (modules or tensors), by name:
        their weights are the cache's identity."""
        raise NotImplementedError(f"{type(self).__name__} does not support the image cache")

    def t2i_image_fields(self, records: Sequence[Any]) -> ImageFields:
        """:meth:`pixel_fields` of the records' images, or their pre-encoded fields (records from
        a cache carry ``cached``)."""
        cached = [getattr(r, "cached", None) for r in records]
        if cached and all(c is not None for c in cached):
            return {k: torch.stack([c[k] for c in cached]) for k in cached[0]}
        return self.pixel_fields([r.image for r in records])
