"""The distributed engines a run can use, and what each needs from the trainer.

``accelerate launch`` picks the engine (environment variables it sets); this module builds the
:class:`~accelerate.Accelerator` so that the choice also holds on a machine without GPUs, fills
in what the engine's configuration leaves to the trainer, and saves / loads model and optimizer
state in the form each engine needs:

- ``single`` / ``ddp``: every process holds the whole model and optimizer state; the main
  process writes ``model.safetensors`` and ``optimizer.pt`` (``optimizer.state_dict()``).
- ``fsdp1`` / ``fsdp2``: parameters and optimizer state are sharded. Every process takes part
  in gathering the *full* state dicts (``torch.distributed.checkpoint.state_dict``), which the
  main process writes as ``model.safetensors`` and ``optimizer.pt`` keyed by parameter name.
  Loading scatters them again, so a checkpoint resumes under any number of processes (and
  under DDP, or one process).
- ``zero1`` / ``zero2`` / ``zero3`` (DeepSpeed): DeepSpeed writes its own partitioned state
  (``deepspeed/``: one optimizer file per process, the fp32 master weights among them);
  ``model.safetensors`` holds the consolidated weights (gathered under ZeRO-3). A DeepSpeed
  checkpoint resumes only with the same number of processes.

On CPU, accelerate forms FSDP and DeepSpeed only for GPU-like devices; :func:`build_accelerator`
makes both work on the CPU with gloo (what the tests and CI run): FSDP by promoting accelerate's
multi-CPU state to FSDP with the plugin the launcher configured, DeepSpeed through its CPU
accelerator with the process group on gloo.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, InitProcessGroupKwargs

log = logging.getLogger(__name__)

# trainer_state.json's "engine" for checkpoints written before engines were recorded
LEGACY_ENGINE = "ddp"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def build_accelerator(**kwargs: Any) -> Accelerator:
    """An :class:`Accelerator` (``kwargs`` as accelerate takes them) honouring the launcher's
    engine choice also without GPUs.

    With no GPU, accelerate forms a multi-process group only when told ``cpu=True``, and then
    silently runs DDP whatever ``--use_fsdp`` says: here the plugin the launcher configured is
    installed so FSDP really shards (FSDP2; accelerate and torch refuse FSDP1 on a CPU,
    docs/distributed.md).
    DeepSpeed on CPU needs ``cpu=False`` (accelerate refuses DeepSpeed with ``cpu=True``) and
    the process group on gloo, which DeepSpeed's CPU accelerator uses.
    """
    has_device = torch.accelerator.is_available()
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and not has_device:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        handlers = [*kwargs.pop("kwargs_handlers", []), InitProcessGroupKwargs(backend="gloo")]
        return Accelerator(cpu=False, kwargs_handlers=handlers, **kwargs)
    acc = Accelerator(cpu=not has_device, **kwargs)
    if _env_flag("ACCELERATE_USE_FSDP") and acc.distributed_type == DistributedType.MULTI_CPU:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        acc.state.fsdp_plugin = plugin
        # both shared states: accelerate copies the process-level one over the other whenever an
        # AcceleratorState() is made (as its utilities do)
        PartialState().distributed_type = DistributedType.FSDP
        acc.state.distributed_type = DistributedType.FSDP
    return acc


def engine_name(acc: Accelerator) -> str:
    """``single``, ``ddp``, ``fsdp1``, ``fsdp2``, or ``zero<stage>`` (DeepSpeed)."""
    if acc.distributed_type == DistributedType.DEEPSPEED:
        zero = acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        return f"zero{int(zero.get('stage', 0))}"
    if acc.distributed_type == DistributedType.FSDP:
        return f"fsdp{acc.state.fsdp_plugin.fsdp_version}"
    return "single" if acc.num_processes == 1 else "ddp"


def is_deepspeed(engine: str) -> bool:
    return engine.startswith("zero")


def is_fsdp(engine: str) -> bool:
    return engine.startswith("fsdp")


@contextmanager
def whole_model_construction(acc: Accelerator) -> Iterator[None]:
    """Build the model whole, as without DeepSpeed, also under ZeRO-3.

    accelerate keeps transformers' DeepSpeed config alive under ZeRO-3, which makes every
    transformers model built meanwhile partition its parameters as it is constructed
    (``zero.Init``): different random initial weights than without DeepSpeed, and empty
    parameters that the backbones' own weight loading cannot fill. Built whole, every process
    holds the same seeded weights, and DeepSpeed partitions them when it wraps the model.
    """
    if acc.distributed_type != DistributedType.DEEPSPEED:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()


def configure_fsdp(acc: Accelerator, backbone: torch.nn.Module) -> list[str]:
    """Under FSDP, leave the backbone's frozen towers unsharded (FSDP's ``ignored_modules``; not
    when the launch names its own) and load the model as it was built; the names of the towers
    left whole. No-op under other engines.

    The backbones call frozen towers outside the forward FSDP wraps (Show-o's MAGVIT-v2 encodes
    the images in ``prepare_t2i``), where a sharded module cannot run. A frozen tower takes no
    gradients and no optimizer state, so whole it costs every process only its weights.
    """
    if acc.distributed_type != DistributedType.FSDP:
        return []
    # accelerate's cpu_ram_efficient_loading moves the model to the meta device and refills it from
    # the main process's state dict, which misses what a backbone keeps outside its module tree
    # (Harmon's VAE stayed on meta); every process builds the model anyway
    acc.state.fsdp_plugin.cpu_ram_efficient_loading = False
    if acc.state.fsdp_plugin.ignored_modules is not None:
        return []
    frozen = [
        (name, child)
        for name, child in backbone.named_children()
        if any(True for _ in child.parameters()) and not any(p.requires_grad for p in child.parameters())
    ]
    if frozen:
        acc.state.fsdp_plugin.ignored_modules = [child for _, child in frozen]
        log.info("FSDP: frozen towers kept whole on every process: %s", ", ".join(n for n, _ in frozen))
    return [name for name, _ in frozen]


# --- DeepSpeed's configuration from the run's -------------------------------------------------


def configure_deepspeed(acc: Accelerator, micro_batch: int, grad_clip: float | None) -> None:
    """Fill in the DeepSpeed config from the run's settings before ``prepare`` (no-op otherwise).

    The micro-batch size and gradient clipping come from the segros config (``data.batch_size``,
    ``optim.grad_clip``; DeepSpeed clips inside its step, so ``optim.grad_clip`` only takes effect
    through ``gradient_clipping``). Values left ``auto`` are filled; a value the DeepSpeed config
    (or ``accelerate launch --gradient_clipping``) sets differently is refused, naming both.
    ZeRO-3 gathers the weights for the consolidated ``model.safetensors`` of each checkpoint
    (``stage3_gather_16bit_weights_on_model_save``); its model-size-based ``auto`` values, which
    accelerate reads off a transformers config the backbones do not have, get DeepSpeed's defaults.
    """
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = acc.state.deepspeed_plugin
    config = plugin.deepspeed_config
    if "optimizer" in config or "scheduler" in config:
        raise ValueError(
            "the DeepSpeed config defines an optimizer or scheduler; segros builds its own AdamW and "
            "learning-rate schedule from optim: (remove them from the DeepSpeed config)"
        )
    clip = float(grad_clip) if grad_clip is not None else 0.0
    wanted = {"train_micro_batch_size_per_gpu": (micro_batch, "data.batch_size", micro_batch),
              "gradient_clipping": (clip, "optim.grad_clip", grad_clip)}  # fmt: skip
    for key, (value, name, shown) in wanted.items():
        given = config.get(key, "auto")
        if given == "auto":
            config[key] = value
        elif float(given) != float(value):
            raise ValueError(
                f"the DeepSpeed config sets {key}={given} but {name} is {shown}; "
                f"make them agree (DeepSpeed applies its own {key}, segros would silently not apply {name})"
            )
    zero = config.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        defaults = {"reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000,
                    "stage3_param_persistence_threshold": 100_000}  # fmt: skip
        for key, value in defaults.items():
            if zero.get(key, "auto") == "auto":
                zero[key] = value
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    elif zero.get("reduce_bucket_size", "auto") == "auto":
        zero["reduce_bucket_size"] = 500_000_000


def skip_unsupported(acc: Accelerator, backwards_done: int) -> str | None:
    """Why a step with a non-finite loss cannot be skipped here, or None.

    DeepSpeed accumulates gradients inside its engine, which keeps no way to drop the gradients
    of micro-batches already backpropagated: skipping after one would fold them into the next
    step. A bad first micro-batch (nothing accumulated yet) skips cleanly."""
    if acc.distributed_type == DistributedType.DEEPSPEED and backwards_done:
        return (
            f"a non-finite loss after {backwards_done} micro-batch(es) of this step had been "
            "backpropagated: DeepSpeed keeps their gradients in its engine, so the step cannot be "
            "skipped; resume from the last checkpoint (--resume), or use optim.grad_accum=1"
        )
    return None


def grad_norm(value: Any) -> float:
    """The gradient norm accelerate's ``clip_grad_norm_`` returned (None under DeepSpeed before
    its first step) as a float, NaN when unknown."""
    if value is None:
        return math.nan
    return float(value)


# --- model and optimizer state ----------------------------------------------------------------


def gathered_model_state(acc: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict, on the CPU, in the main process, where the engine shards it
    (FSDP, ZeRO-3; ZeRO-1/2 clone theirs); None elsewhere, and under one process or DDP, whose
    module state dict is already whole.

    Every process must call it: under FSDP and ZeRO-3 the parameters are gathered from all."""
    engine = engine_name(acc)
    if engine in ("single", "ddp"):
        return None
    if engine == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = acc.get_state_dict(model)  # FSDP1 full state dict; ZeRO gathered
    return state if acc.is_main_process else None


def save_optimizer(acc: Accelerator, model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
    """Write the optimizer state into ``folder`` the engine's way. Every process calls it."""
    engine = engine_name(acc)
    if is_deepspeed(engine):
        # each process writes its partition (optimizer state and fp32 master weights)
        model.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)
        return
    if is_fsdp(engine):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(model, _inner(optimizer), options=options)
    else:
        state = optimizer.state_dict() if acc.is_main_process else None
    if acc.is_main_process:
        torch.save(state, folder / "optimizer.pt")


def load_model_and_optimizer(
    acc: Accelerator, model: torch.nn.Module, optimizer: Any, folder: Path, saved: dict[str, Any]
) -> None:
    """Load the model and optimizer state of checkpoint ``folder`` (``saved``: its trainer state).

    Every process calls it. Refuses, with the reason, combinations that cannot resume exactly:
    a DeepSpeed checkpoint under another engine or number of processes, or the reverse."""
    from safetensors.torch import load_file

    engine, was = engine_name(acc), saved.get("engine", LEGACY_ENGINE)
    world, was_world = acc.num_processes, int(saved["world_size"])
    if is_deepspeed(engine) or is_deepspeed(was):
        if engine != was or world != was_world:
            raise ValueError(
                f"--resume: {folder} was saved by DeepSpeed {was} on {was_world} processes; this run is "
                f"{engine} on {world}. DeepSpeed's partitioned optimizer state resumes only on the same "
                "set-up (DeepSpeed's ds_to_universal converts it; or start a new run from the weights with "
                f"model.init_from={folder})"
            )
        _, client = model.load_checkpoint(
            str(folder / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if client is None:
            raise ValueError(f"--resume: DeepSpeed could not load {folder / 'deepspeed'}")
        return
    optim_state = torch.load(folder / "optimizer.pt", weights_only=True)
    by_name = isinstance(next(iter(optim_state["state"]), 0), str)
    if is_fsdp(engine) or by_name:
        weights = load_file(str(folder / "model.safetensors"))
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if not by_name:
            optim_state = _keyed_by_name(acc.unwrap_model(model), _inner(optimizer), optim_state)
        options = StateDictOptions(full_state_dict=True, strict=True)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, _inner(optimizer), optim_state, options=options)
    else:
        copy_weights_into(acc.unwrap_model(model), folder / "model.safetensors")
        optimizer.load_state_dict(optim_state)


def copy_weights_into(module: torch.nn.Module, path: Path) -> None:
    """Load a ``model.safetensors`` into ``module`` as ``load_state_dict(strict=True)`` would, but
    without a second copy of the model in memory: each tensor's bytes are read from the file straight
    into the parameter's own storage (safetensors' layout: an 8-byte header length, a JSON header
    of dtype, shape and byte offsets, then the raw little-endian data). A tensor that cannot take
    bytes in place (on a GPU, not contiguous, another dtype) goes through one tensor-sized buffer."""
    import json
    import struct

    from safetensors import safe_open

    own = module.state_dict(keep_vars=True)
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = {k: v for k, v in json.loads(f.read(length)).items() if k != "__metadata__"}
        missing, unexpected = sorted(set(own) - set(header)), sorted(set(header) - set(own))
        if missing or unexpected:
            raise RuntimeError(
                f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        slow = []
        with torch.no_grad():
            for name, meta in header.items():
                target = own[name].data
                if list(target.shape) != list(meta["shape"]):
                    raise RuntimeError(
                        f"{path}: {name} has shape {tuple(meta['shape'])}, the model {tuple(target.shape)}"
                    )
                start, stop = meta["data_offsets"]
                in_place = (
                    target.device.type == "cpu"
                    and target.is_contiguous()
                    and _SAFETENSORS_DTYPES.get(meta["dtype"]) == target.dtype
                    and stop - start == target.numel() * target.element_size()
                )
                if not in_place:
                    slow.append(name)
                    continue
                if target.numel():
                    f.seek(8 + length + start)
                    if f.readinto(memoryview(target.view(-1).view(torch.uint8).numpy())) != stop - start:
                        raise RuntimeError(f"{path} is cut short in {name}")
    if slow:
        with safe_open(str(path), "pt") as f, torch.no_grad():
            for name in slow:
                own[name].copy_(f.get_tensor(name))


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _keyed_by_name(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """``optimizer.state_dict()`` (parameters numbered in param-group order) with parameter
    names instead of numbers, as the full state dicts of ``torch.distributed.checkpoint`` have;
    for a single-process or DDP checkpoint resumed under FSDP."""
    names = {id(p): n for n, p in module.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[i]: s for i, s in state["state"].items()}, "param_groups": groups}
