"""An exponential moving average (EMA) of the trainable weights (``optim.ema_decay``).

After every optimizer step that updated the weights (not one skipped for a NaN / inf loss, nor
one fp16's gradient scaler skipped), and only every ``optim.ema_every``-th step,

    ema <- decay * ema + (1 - decay) * weight

for each trainable parameter, starting from the weights the run starts with. The update is
torch's own :func:`torch.optim.swa_utils.get_ema_multi_avg_fn` (a fused ``_foreach_lerp_``).
torch's ``AveragedModel`` and diffusers' ``EMAModel`` were not used: ``AveragedModel`` deep-copies
the whole module, frozen towers and buffers included (a second full model beside the EMA), and
``EMAModel`` subtracts the EMA from the weight on the EMA's device, so an EMA kept on the CPU
while training on a GPU would have to be moved to the GPU every step; it also warms its decay up
by a schedule of its own. Here only the trainable tensors are averaged, on the training device or
(``optim.ema_device: cpu``) on the CPU, one parameter copied over at a time. Under FSDP2 each
process averages the shards of the parameters it holds, and the shards are gathered into whole
tensors when a checkpoint is saved (and cut again when it is resumed).

The EMA is kept in float32 whatever the weights' dtype (a bf16 EMA with a decay of 0.9999 would
not move), and saved beside the weights in every checkpoint as ``ema.safetensors``: plain
parameter names as in ``model.safetensors``, only the trainable ones. Reading it back is a plain
copy, so a resumed run continues with bit-identical EMA weights. :func:`segros.storage.load_ema_weights` puts
them over a loaded model (``segros generate / eval checkpoint / export --weights ema``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

# the file's name and reading it back are storage's (a loaded model reads it without the trainer)
from segros.storage import EMA_FILE as EMA_FILE
from segros.storage import load_ema_weights as load_ema_weights
from segros.storage import read_ema as read_ema


class WeightsEMA:
    """The EMA of ``params`` (name -> trainable parameter, the live tensors the optimizer updates)."""

    def __init__(
        self, params: dict[str, torch.nn.Parameter], decay: float, device: str = "same", every: int = 1
    ) -> None:
        if not params:
            raise ValueError("optim.ema_decay: the model has no trainable parameters to average")
        self.decay, self.every, self.updates = decay, every, 0
        self.params = params
        self._update = get_ema_multi_avg_fn(decay)
        self.on_cpu = device == "cpu"
        self.tensors = {
            name: _local(p).to("cpu" if self.on_cpu else p.device, torch.float32, copy=True)
            for name, p in params.items()
        }

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average over from the parameters' current values."""
        for name, p in self.params.items():
            self.tensors[name].copy_(_local(p))

    def due(self, step: int) -> bool:
        """Whether the optimizer step numbered ``step`` (1-based) updates the EMA."""
        return step % self.every == 0

    @torch.no_grad()
    def update(self) -> None:
        """One EMA update from the parameters' current values."""
        names = list(self.params)
        if self.on_cpu:  # one parameter on the CPU at a time, not a second copy of all of them
            for n in names:
                self._update([self.tensors[n]], [_local(self.params[n]).to("cpu", torch.float32)], None)
        else:
            current = [_local(self.params[n]).float() for n in names]  # no copy when float32
            self._update([self.tensors[n] for n in names], current, None)
        self.updates += 1

    def state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The whole EMA tensors by plain parameter name, contiguous and on the CPU. Under FSDP2
        each process holds the EMA of its shards: they are gathered here, so every process must
        call it (as the engine's weights are gathered for ``model.safetensors``); ``keep=False``
        (the processes that do not write) returns nothing and holds no gathered tensor longer
        than one parameter."""
        state = {}
        for name, t in self.tensors.items():
            p = self.params[name]
            if _is_dtensor(p):
                from torch.distributed.tensor import DTensor

                whole = DTensor.from_local(
                    t.to(p.device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
                )
                t = whole.full_tensor()
            if keep:
                state[name] = t.detach().cpu().contiguous()
        return state

    def save(self, folder: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``state`` (default: :meth:`state_dict`) as ``folder/ema.safetensors``."""
        from safetensors.torch import save_file

        path = Path(folder) / EMA_FILE
        metadata = {"decay": repr(self.decay), "every": str(self.every), "updates": str(self.updates)}
        save_file(self.state_dict() if state is None else state, str(path), metadata=metadata)
        return path

    @torch.no_grad()
    def load(self, folder: Path) -> None:
        """Restore the EMA a checkpoint holds (exactly: a copy of the saved float32 tensors)."""
        from safetensors import safe_open

        path = Path(folder) / EMA_FILE
        saved = read_ema(folder)
        if set(saved) != set(self.tensors):
            missing, extra = sorted(set(self.tensors) - set(saved)), sorted(set(saved) - set(self.tensors))
            raise ValueError(
                f"--resume: {path} averages other parameters than this run trains (not saved: "
                f"{missing[:5]}, not trained now: {extra[:5]}); was optim.freeze changed?"
            )
        for name, tensor in saved.items():
            p = self.params[name]
            if _is_dtensor(p):  # this process's shard of the whole tensor (every process read it)
                from torch.distributed.tensor import distribute_tensor

                whole = tensor.to(p.device)
                tensor = distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None).to_local()
            self.tensors[name].copy_(tensor)
        with safe_open(str(path), framework="pt") as f:
            self.updates = int((f.metadata() or {}).get("updates", 0))


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(p: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds: all of it, or its shard under FSDP2."""
    p = p.detach()
    return p.to_local() if _is_dtensor(p) else p
