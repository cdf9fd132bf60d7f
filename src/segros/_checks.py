"""Argument checks shared by the core modules: clear errors that name the argument and sample."""

from __future__ import annotations

import math

import torch


class SettingError(ValueError):
    """A setting outside its range or choices. ``setting`` is its name, which is also its key
    under a config's ``method:`` section, so a config error can name the key path."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class SettingTypeError(TypeError):
    """A setting of the wrong type; ``setting`` as in :class:`SettingError`."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def check_number(name: str, value: float) -> None:
    """A number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingTypeError(name, f"{name} must be a number, got {type(value).__name__}")


def check_at_least(name: str, value: float, low: float) -> None:
    """A finite number >= ``low``."""
    check_number(name, value)
    if not (math.isfinite(value) and value >= low):
        raise SettingError(name, f"{name} must be finite and >= {low}, got {value}")


def check_ratio(name: str, value: float) -> None:
    """A ratio must be a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingTypeError(name, f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise SettingError(name, f"{name} must be in [0, 1], got {value}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingError(name, f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_bool(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise SettingTypeError(name, f"{name} must be a bool, got {type(value).__name__}")


def check_float_tensor(name: str, x: object, rank: int) -> torch.Tensor:
    """A floating-point tensor of the given rank (any float dtype)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(x.shape)}")
    return x


def check_bool_tensor(name: str, x: object, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    return x


def raise_if_not_finite(name: str, x: torch.Tensor) -> None:
    """Name the first samples (dim 0) that hold NaN or inf. Call on the slow path only."""
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    if bad.any():
        samples = bad.nonzero().flatten()[:8].tolist()
        raise ValueError(f"{name} contains NaN or inf at sample index {samples}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs; float64 only if an input already is."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
