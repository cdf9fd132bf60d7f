"""Saving and resuming a training run: what a checkpoint holds, written and read back.

:class:`Checkpointer` is the trainer's checkpointing, apart from the step: every process writes its
generators and data position, the engine writes (or gathers) the weights and optimizer state
(segros.train.engines), the main process adds the EMA, the LoRA adapter, the lr schedule and the
trainer state, and :mod:`segros.train.checkpoint` puts the folder in place and keeps the last
``run.keep_last``. :meth:`Checkpointer.resume` reads the newest intact checkpoint back, also one
saved by another number of processes or (FSDP / DDP / one process) another engine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from segros.backbones import lora
from segros.data.sampling import reshard_states
from segros.train import checkpoint as ckpt
from segros.train import engines, shared_base

log = logging.getLogger(__name__)


class Checkpointer:
    """Writes and reads the checkpoints of one run in ``out_dir``.

    It holds what a checkpoint is made of: the accelerator and engine, the backbone and its
    prepared ``model``, the optimizer and lr ``scheduler``, the ``ema`` (or None), whether LoRA is
    on, this process's ``generator`` and its record streams ``t2i`` / ``i2t``. The counters that
    change every step (step, skipped steps, training seconds) are passed to :meth:`save`.
    """

    def __init__(
        self,
        accelerator: Any,
        out_dir: Path,
        keep_last: int,
        *,
        backbone: Any,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        schedule_steps: int,
        ema: Any,
        lora: bool,
        generator: torch.Generator,
        t2i: Any,
        i2t: Any,
    ) -> None:
        self.accelerator = accelerator
        self.out_dir = out_dir
        self.keep_last = keep_last
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.engine = engines.engine_name(accelerator)
        self.backbone, self.model = backbone, model
        self.optimizer, self.scheduler, self.schedule_steps = optimizer, scheduler, schedule_steps
        self.ema, self.lora = ema, lora
        # LoRA with nothing but adapters training: checkpoints share the base files (hard links)
        self.shares_base = lora and shared_base.base_is_frozen(backbone)
        self.generator, self.t2i, self.i2t = generator, t2i, i2t

    def rank_state(self) -> dict[str, Any]:
        """This process's random generators and data position."""
        return {
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "t2i": self.t2i.state_dict(),
            "i2t": self.i2t.state_dict() if self.i2t else None,
        }

    def save(self, step: int, skipped_steps: int, train_seconds: float) -> Path | None:
        """Write the checkpoint of ``step``; every process takes part (the weights and optimizer
        state are gathered, or written per process, as the engine needs: segros.train.engines).
        The final folder on the main process, None on the others."""
        acc = self.accelerator
        tmp = ckpt.tmp_dir(self.out_dir, step)
        if acc.is_main_process:
            ckpt.begin(self.out_dir, step)
        acc.wait_for_everyone()
        ckpt.save_rank_state(tmp, self.rank, self.rank_state())
        weights = engines.gathered_model_state(acc, self.model)  # sharded engines: the whole model
        ema = self.ema.state_dict(keep=acc.is_main_process) if self.ema else None  # gathered (FSDP2)
        with ckpt.writing(tmp):
            engines.save_optimizer(acc, self.model, self.optimizer, tmp)
        final = None
        base_state: dict[str, Any] = {}
        if acc.is_main_process:
            base_state = self._save_base(tmp, weights)
            del weights
            if self.lora:
                lora.save_adapter(self.backbone, tmp)  # peft's format, tmp/adapter
            if self.ema is not None:
                with ckpt.writing(tmp):
                    self.ema.save(tmp, ema)  # tmp/ema.safetensors
            ckpt.save_scheduler(tmp, self.scheduler)
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": step,
                "world_size": self.world,
                "engine": self.engine,
                "schedule_steps": self.schedule_steps,  # the lr schedule's length (see resume)
                "skipped_steps": skipped_steps,
                "train_seconds": round(train_seconds, 2),  # across resumes
                **({"ema_decay": self.ema.decay, "ema_every": self.ema.every} if self.ema else {}),
                **base_state,
            }
            final = ckpt.finish(self.out_dir, tmp, step, state, self.keep_last)
        acc.wait_for_everyone()
        return final

    def _save_base(self, tmp: Path, weights: dict[str, Any] | None) -> dict[str, Any]:
        """Write the model folder's files (``save_pretrained``) into ``tmp``, or, under LoRA with a
        frozen base, hard-link them from the previous checkpoint (segros.train.shared_base). The
        trainer-state entries that let the next checkpoint do the same."""
        fingerprint = shared_base.buffers_fingerprint(self.backbone) if self.shares_base else None
        previous = ckpt.latest_checkpoint(self.out_dir) if fingerprint else None
        if previous is not None:
            files = shared_base.reusable_files(ckpt.load_trainer_state(previous), fingerprint)
            if shared_base.link_base(previous, files, tmp):
                log.debug("LoRA: base weights hard-linked from %s", previous.name)
                return {shared_base.STATE_KEY: files, shared_base.FINGERPRINT_KEY: fingerprint}
        before = shared_base.snapshot(tmp)
        if weights is None:
            self.backbone.save_pretrained(tmp)  # the base weights, plain names
        else:
            self.backbone.save_pretrained(tmp, state_dict=weights)  # gathered, plain names
        if fingerprint is None:
            return {}
        files = shared_base.files_written(tmp, before)
        return {shared_base.STATE_KEY: files, shared_base.FINGERPRINT_KEY: fingerprint}

    def resume(self) -> dict[str, Any]:
        """Load the newest intact checkpoint into the model, optimizer, schedule, EMA, generators
        and data streams; its trainer state (``step``, ``skipped_steps``, ``train_seconds``, ...)."""
        folder = ckpt.latest_checkpoint(self.out_dir)
        if folder is None:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint under {ckpt.checkpoints_dir(self.out_dir)}"
            )
        state = ckpt.load_trainer_state(folder)
        if lora.has_adapter(folder) and not self.lora:
            raise ValueError(
                f"--resume: {folder} holds a LoRA adapter but this config has LoRA off; set lora.rank"
            )
        engines.load_model_and_optimizer(self.accelerator, self.model, self.optimizer, folder, state)
        if self.lora:
            lora.load_adapter(self.accelerator.unwrap_model(self.model), folder)
        ckpt.load_scheduler(folder, self.scheduler)
        self._resume_ema(folder, state)
        self._load_rank_state(folder, int(state["world_size"]))
        planned = state.get("schedule_steps")
        if planned is not None and int(planned) != self.schedule_steps:
            log.warning(
                "--resume: %s was trained on an lr schedule of %d steps, this run plans %d "
                "(run.max_steps / optim.schedule_steps): from here the learning rate differs from an "
                "uninterrupted run of either length; set optim.schedule_steps=%d to keep the first",
                folder, int(planned), self.schedule_steps, int(planned),
            )  # fmt: skip
        log.info("resumed from %s at step %d", folder, int(state["step"]))
        return state

    def _resume_ema(self, folder: Path, state: dict[str, Any]) -> None:
        """The checkpoint's EMA, exactly; from the resumed weights (with a warning) when it has none."""
        if self.ema is None:
            if "ema_decay" in state:
                log.warning("--resume: %s holds EMA weights; optim.ema_decay is off: they end here", folder)
        elif "ema_decay" in state:
            self.ema.load(folder)
        else:
            log.warning("--resume: %s holds no EMA weights; the EMA starts from its weights now", folder)
            self.ema.reset()

    def _load_rank_state(self, folder: Path, saved_world: int) -> None:
        """This process's generators and data position. With the number of processes it was saved
        by, exactly its own. With another, the data order continues by global sample count
        (:func:`~segros.data.sampling.reshard_states`); process ``r`` takes the generators and
        bad-record counts of saved process ``r`` when there was one, fresh seeded ones otherwise
        (docs/distributed.md says what is then exact)."""
        if saved_world == self.world:
            rank_state = ckpt.load_rank_state(folder, self.rank)
        else:
            saved = [ckpt.load_rank_state(folder, r) for r in range(saved_world)]
            log.warning(
                "--resume: %s was saved by %d processes, this run has %d: the data order continues by "
                "global sample count; random draws are not those of an uninterrupted run",
                folder, saved_world, self.world,
            )  # fmt: skip
            # saved process r's generators and bad-record counts, or a new process's fresh ones
            rank_state = dict(saved[self.rank] if self.rank < saved_world else self.rank_state())
            for stream in ("t2i", "i2t"):
                if saved[0][stream] is not None and rank_state[stream] is not None:
                    order = reshard_states([s[stream]["order"] for s in saved], self.rank, self.world)
                    rank_state[stream] = {**rank_state[stream], "order": order}
        self.generator.set_state(rank_state["generator"])
        torch.set_rng_state(rank_state["torch_rng"])
        self.t2i.load_state_dict(rank_state["t2i"])
        if self.i2t is not None and rank_state["i2t"] is not None:
            self.i2t.load_state_dict(rank_state["i2t"])
