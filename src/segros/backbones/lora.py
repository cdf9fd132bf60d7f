"""LoRA through peft on any backbone: adapters on ``backbone.model``, everything else frozen.

:func:`apply` wraps the backbone's transformer (``backbone.model``) in a ``peft.PeftModel``
with the ``lora:`` section's rank, alpha, dropout and target modules (default: the backbone's
``lora_targets``). Only the adapter weights, plus parameters matching ``lora.trainable``, keep
gradients, so only they get optimizer state. The input embedding table stays frozen: the
grounding reads it (``Backbone.grounding_inputs``), and a ``lora.trainable`` pattern that
matches it is refused.

The backbone's own ``state_dict`` keeps its plain names (peft's ``base_model.model.`` and
``.base_layer`` are taken out, adapter weights left out), so ``save_pretrained`` still writes
a normal model folder of the base weights. The adapter goes beside it, in peft's own format
(``adapter/adapter_config.json`` + ``adapter/adapter_model.safetensors``, :func:`save_adapter`).
:func:`load_adapter` restores it exactly (``--resume``); :func:`merge_adapter` folds it into
the weights (``merge_and_unload``), as ``load_backbone`` does for a folder with an adapter and
``segros export --merge`` writes out.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from torch import nn

from segros.backbones.base import Backbone

ADAPTER_DIR = "adapter"  # inside a checkpoint / model folder
_PEFT_PREFIX = "base_model.model."


def plain_name(name: str) -> str:
    """A parameter name without peft's wrapping (``model.base_model.model.x.base_layer.w``
    -> ``model.x.w``)."""
    return name.replace(_PEFT_PREFIX, "").replace(".base_layer.", ".")


def _is_adapter(name: str) -> bool:
    return ".lora_" in name


def is_applied(backbone: Backbone) -> bool:
    from peft import PeftModel

    return isinstance(backbone.model, PeftModel)


def _embedding_params(model: nn.Module) -> set[str]:
    """Plain names of the input embedding tables (``nn.Embedding`` modules named ``*embed*``)."""
    return {
        f"{plain_name(name)}.{p}"
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and "embed" in name.rsplit(".", 1)[-1]
        for p, _ in module.named_parameters(recurse=False)
    }


def apply(backbone: Backbone, rank: int, alpha: float | None = None, dropout: float = 0.0,
          targets: list[str] | None = None, trainable: list[str] | None = None) -> None:  # fmt: skip
    """Wrap ``backbone.model`` in LoRA adapters and freeze everything but them and ``trainable``."""
    from peft import LoraConfig, get_peft_model

    if is_applied(backbone):
        raise ValueError("LoRA is already applied to this backbone")
    targets = list(targets or backbone.lora_targets)
    if not targets:
        raise ValueError(f"{type(backbone).__name__} names no default LoRA targets: set lora.targets")
    trainable = list(trainable or [])
    embeddings = {f"model.{n}" for n in _embedding_params(backbone.model)}
    plain = [n for n, _ in backbone.named_parameters()]
    for pattern in trainable:
        hits = [n for n in plain if fnmatch.fnmatch(n, pattern)]
        if not hits:
            raise ValueError(f"lora.trainable pattern {pattern!r} matches no parameter name")
        if touched := sorted(embeddings.intersection(hits)):
            raise ValueError(
                f"lora.trainable pattern {pattern!r} matches the input embeddings ({', '.join(touched)}), "
                "which the grounding reads: they must stay frozen"
            )
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    try:
        backbone.model = get_peft_model(backbone.model, config)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"lora.targets {targets}: {e}") from None
    for name, param in backbone.named_parameters():
        clean = plain_name(name)
        param.requires_grad_(_is_adapter(name) or any(fnmatch.fnmatch(clean, p) for p in trainable))
    backbone.register_state_dict_post_hook(_plain_state_dict)
    backbone.register_load_state_dict_pre_hook(_to_peft_names)
    backbone.register_load_state_dict_post_hook(_adapter_keys_not_missing)


def apply_section(backbone: Backbone, section: Any) -> None:
    """:func:`apply` with a config's ``lora:`` section (:class:`segros.train.config.LoraConfig`)."""
    apply(backbone, section.rank, section.alpha, section.dropout, section.targets, section.trainable)


# --- the backbone keeps its plain state-dict names -------------------------------------------------
def _plain_state_dict(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if not key.startswith(prefix):
            state_dict[key] = value
        elif not _is_adapter(key):
            state_dict[prefix + plain_name(key[len(prefix) :])] = value


def _to_peft_names(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    names = [n for n, _ in module.named_parameters(remove_duplicate=False)]  # tied weights too
    for name in names + [n for n, _ in module.named_buffers(remove_duplicate=False)]:
        clean = prefix + plain_name(name)
        if clean != prefix + name and clean in state_dict:
            state_dict[prefix + name] = state_dict.pop(clean)


def _adapter_keys_not_missing(module: nn.Module, incompatible: Any) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not _is_adapter(k)]


# --- the adapter in peft's format ---------------------------------------------------------------
def save_adapter(backbone: Backbone, folder: str | Path) -> Path:
    """Write the adapter (peft ``save_pretrained``) to ``folder/adapter``."""
    out = Path(folder) / ADAPTER_DIR
    backbone.model.save_pretrained(str(out))
    return out


def load_adapter(backbone: Backbone, folder: str | Path) -> None:
    """Load ``folder/adapter`` into a backbone :func:`apply` wrapped: every adapter weight, exactly."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_DIR / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint was not trained with LoRA (lora.rank=0)")
    result = set_peft_model_state_dict(backbone.model, load_file(str(path)))
    missing = [k for k in result.missing_keys if _is_adapter(k)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit lora's current set-up (rank / targets): "
            f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
        )


def merge_adapter(backbone: Backbone, folder: str | Path) -> Backbone:
    """Fold ``folder/adapter`` (or the adapter already applied) into the weights; plain model."""
    from peft import PeftModel

    training = backbone.model.training  # peft's loading switches to eval mode
    if not is_applied(backbone):
        backbone.model = PeftModel.from_pretrained(backbone.model, str(Path(folder) / ADAPTER_DIR))
    merged = backbone.model.merge_and_unload()
    # the state-dict hooks stay registered; with no peft names left they change nothing
    backbone.model = merged.train(training)
    return backbone


def has_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_DIR / "adapter_config.json").is_file()


def parameter_counts(backbone: nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts (each tensor once) and the trainable share."""
    params = {id(p): p for p in backbone.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / max(total, 1), 6),
    }
