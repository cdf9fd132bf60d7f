"""The backbone-agnostic training loop, on one CPU or many processes through ``accelerate``.

Per optimizer step and micro-batch: take the next collated batch (read and ``collate_t2i``'d in
loader workers, :mod:`segros.data.loader`), encode it on the device (``encode_t2i``), read the grounding
embeddings (``mode="ground"``), draw masking ratios from the backbone's schedule, build the
supervision plan, and backpropagate ``recon + lambda * i2t`` (Eq. 13). Every random draw of
SeGroS comes from one seeded ``torch.Generator`` per process; dropout uses the global RNG.
Both are checkpointed with the data position, so ``--resume`` reproduces the uninterrupted run.

A step whose loss is NaN or inf on any process is skipped on all of them (no update) and
counted; ``run.max_bad_steps`` of them in a row stop the run with the last good checkpoint
left as it was.

The :class:`Trainer` is the set-up (model, optimizer, data: ``_setup_*``), the step
(:meth:`Trainer.train_step`, one optimizer step returning a :class:`StepOutput`) and the loop
(:meth:`Trainer.run`, which sequences steps, logging and checkpoints). Checkpointing is its own
object (:class:`~segros.train.checkpointer.Checkpointer`: save, resume, keep_last, engine state),
and so is logging (:class:`~segros.train.reporting.RunReport`: curves, pictures, progress, the
run's summary). Sample pictures are the application's business: it passes a
:data:`~segros.train.logger.PictureCallback` (the demo draws ShapesWorld prompts; a run on other
data passes its own prompts, or none).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from segros.backbones import lora
from segros.backbones.base import Backbone, I2TBatch, T2IBatch
from segros.backbones.registry import build_backbone, resolve_checkpoint
from segros.data.budget import BadRecordBudget
from segros.data.cache import open_cache
from segros.data.loader import collated_batches, default_workers
from segros.data.sampling import RecordBatches, ShardedOrder
from segros.data.sources import i2t_source, t2i_source
from segros.data.streaming import streaming_batches
from segros.losses import total_loss
from segros.plan import SupervisionPlan
from segros.runlock import FolderInUseError, FolderLock, lock_folder
from segros.supervision import ground_and_plan, sample_ratio
from segros.train import checkpoint as ckpt
from segros.train import engines
from segros.train.checkpointer import Checkpointer
from segros.train.config import TrainConfig, dump_config
from segros.train.ema import WeightsEMA
from segros.train.fingerprint import fingerprint, is_sharded
from segros.train.logger import PictureCallback
from segros.train.memory import peak_memory
from segros.train.reporting import RunReport
from segros.train.stopping import EXIT_CODES, StopSignals

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps with a non-finite loss."""


class RunStoppedError(RuntimeError):
    """:func:`train_to_end` was stopped by a signal before its last step (a checkpoint was saved);
    ``exit_code`` is what a command exits with (:data:`segros.train.stopping.EXIT_CODES`)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # total loss per step (NaN when skipped)
    skipped_steps: int = 0
    bad_records: int = 0
    seconds: float = 0.0  # wall time of this call
    total_seconds: float = 0.0  # wall time of the run up to its last step, across resumes
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT": stopped early, with a checkpoint (stopping)


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``min_ratio`` or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def freeze(model: torch.nn.Module, patterns: list[str]) -> int:
    """Turn off gradients of parameters whose name matches any fnmatch pattern; returns count."""
    frozen = 0
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            param.requires_grad_(False)
            frozen += 1
    if patterns and not frozen:
        raise ValueError(f"optim.freeze patterns {patterns} match no parameter name")
    return frozen


def compile_blocks(backbone: Backbone) -> int:
    """``torch.compile`` every trainable transformer block in place (``run.compile``).

    Block by block, as torchtune does: each block compiles once and is reused by its siblings, and
    ``nn.Module.compile`` keeps parameter names, so checkpoints load with or without it. Returns
    the number of blocks compiled; a backbone that names none is a clear error.
    """
    blocks = backbone.transformer_blocks()
    if not blocks:
        raise ValueError(
            f"run.compile: backbone {backbone.name!r} names no trainable transformer blocks "
            "(Backbone.block_classes); train without run.compile"
        )
    for block in blocks:
        block.compile()
    log.info("run.compile: torch.compile on %d blocks (%s)", len(blocks), type(blocks[0]).__name__)
    return len(blocks)


def param_groups(
    model: torch.nn.Module, weight_decay: float, patterns: list[str], one_d: bool
) -> list[dict[str, Any]]:
    """Trainable parameters split into AdamW groups with and without weight decay."""
    decay, no_decay, matched = [], [], False
    for name, param in model.named_parameters():
        named = any(fnmatch.fnmatch(name, p) for p in patterns)
        matched |= named
        if param.requires_grad:
            (no_decay if named or (one_d and param.ndim <= 1) else decay).append(param)
    if patterns and not matched:
        raise ValueError(f"optim.no_decay patterns {patterns} match no parameter name")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


@dataclass
class StepOutput:
    """What one optimizer step did (:meth:`Trainer.train_step`)."""

    losses: dict[str, float]  # "recon", "i2t", "total": means over the micro-batches run
    skipped: bool  # a loss was NaN / inf on some process: no update
    grad_norm: float = float("nan")  # before clipping; NaN when not clipped or skipped
    batch: T2IBatch | None = None  # the last micro-batch run, and its plan (for pictures)
    plan: SupervisionPlan | None = None

    @property
    def loss(self) -> float:
        """The total loss of the step (NaN when it was skipped)."""
        return float("nan") if self.skipped else self.losses["total"]

    @property
    def grounding(self) -> dict[str, float]:
        """Grounding statistics of the last plan (:func:`grounding_stats`), computed when read."""
        return grounding_stats(self.plan) if self.plan is not None else {}


class Trainer:
    """Holds everything one run needs; :meth:`run` trains to ``run.max_steps``.

    ``pictures``: what to draw every ``run.picture_every`` steps besides the grounding panel of
    the current batch, e.g. :func:`~segros.train.logger.sample_pictures` of some prompts.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path,
        resume: bool = False,
        pictures: PictureCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.seconds_before, self.run_start = 0.0, None  # see train_seconds()
        self.folder_lock: FolderLock | None = None  # held from _setup_accelerator to the end of run()
        self._setup_accelerator()
        try:
            self.backbone = self._setup_model()
            self._setup_optimizer()
            self.ema = self._setup_ema()
            self.plan_cfg = cfg.method.plan_config()
            self.generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + self.rank)
            self._setup_data()
            self.step = 0
            self.skipped_steps = 0
            self._iterators: tuple[Any, Any] | None = None  # the data streams train_step reads
            self.checkpoints = Checkpointer(
                self.accelerator,
                self.out_dir,
                cfg.run.keep_last,
                backbone=self.backbone,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                schedule_steps=self.schedule_steps,
                ema=self.ema,
                lora=self.lora,
                generator=self.generator,
                t2i=self.t2i,
                i2t=self.i2t,
            )
            if resume:
                state = self.checkpoints.resume()
                self.step = int(state["step"])
                self.skipped_steps = int(state.get("skipped_steps", 0))
                self.seconds_before = float(state.get("train_seconds", 0.0))
            self.report = RunReport(self.accelerator, cfg, self.out_dir, self.engine, pictures)
        except BaseException:
            self._unlock_folder()  # a Trainer that could not be built leaves its folder free
            raise

    # --- set-up ---------------------------------------------------------------------------------
    def _setup_accelerator(self) -> None:
        """The accelerate set-up (processes, precision, accumulation, trackers); the run folder."""
        cfg = self.cfg
        trackers = (["tensorboard"] if cfg.logging.tensorboard else []) + (
            ["wandb"] if cfg.logging.wandb_project else []
        )
        # the launcher's engine (DDP, FSDP, DeepSpeed), also on a machine without GPUs
        self.accelerator = engines.build_accelerator(
            mixed_precision=cfg.optim.mixed_precision,
            # accelerate's own accumulation, so DeepSpeed (which keeps its own micro-step count
            # and ignores no_sync) steps once per group too, and DDP syncs only on the last one
            gradient_accumulation_steps=cfg.optim.grad_accum,
            log_with=trackers or None,
            project_dir=str(self.out_dir),
        )
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.engine = engines.engine_name(acc)
        self._lock_folder()  # before anything is written into it
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(dump_config(cfg))
        acc.wait_for_everyone()

    def _lock_folder(self) -> None:
        """One run per folder (:mod:`segros.runlock`): the main process locks it; when that is
        refused, every process raises :class:`FolderInUseError` (the others learn it through an
        all-reduce), after the process group is taken down so that no process hangs or aborts."""
        acc = self.accelerator
        refusal = None
        if acc.is_main_process:
            try:
                self.folder_lock = lock_folder(self.out_dir)
            except FolderInUseError as err:
                refusal = err
        refused = refusal is not None
        if self.world > 1:
            refused = bool(acc.reduce(torch.tensor([float(refused)], device=acc.device), "sum").item())
        if refused:
            acc.end_training()
            raise refusal or FolderInUseError(f"{self.out_dir} is in use (the main process was refused)")

    def _unlock_folder(self) -> None:
        if self.folder_lock is not None:
            self.folder_lock.release()
            self.folder_lock = None

    def _setup_model(self) -> Backbone:
        """The backbone as ``model:`` says (same initial weights on every process), with LoRA
        adapters when configured and ``optim.freeze`` applied."""
        cfg = self.cfg
        set_seed(cfg.run.seed)  # identical initial weights on every process
        options = cfg.model_options()
        init_from = getattr(options, "init_from", None)
        if init_from and lora.has_adapter(resolve_checkpoint(init_from)):
            raise ValueError(
                f"model.init_from {init_from} holds a LoRA adapter, which init_from would ignore: "
                "point it at a merged folder (segros export --merge RUN --out DIR)"
            )
        with engines.whole_model_construction(self.accelerator):  # ZeRO-3 would partition it now
            backbone = build_backbone(options)
        self.lora = cfg.lora is not None and cfg.lora.enabled
        if self.lora:  # adapters on the transformer; all else frozen (segros.backbones.lora)
            lora.apply_section(backbone, cfg.lora)
        freeze(backbone, cfg.optim.freeze)
        if cfg.run.compile:
            compile_blocks(backbone)
        return backbone

    def _setup_optimizer(self) -> None:
        """AdamW over the trainable parameters, the lr schedule, and accelerate's wrapping."""
        o, acc = self.cfg.optim, self.accelerator
        groups = param_groups(self.backbone, o.weight_decay, o.no_decay, o.no_decay_1d)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        total = self.schedule_steps = o.schedule_steps or self.cfg.run.max_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, o.warmup_steps, total, o.schedule, o.min_lr_ratio)
        )
        # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would
        # step it once per process.
        if self.lora and self.engine not in ("single", "ddp"):
            raise ValueError(
                f"LoRA under {self.engine} is not supported: LoRA trains few parameters, so plain data "
                "parallelism fits (accelerate launch without --use_fsdp / --use_deepspeed)"
            )
        engines.configure_deepspeed(acc, self.cfg.data.batch_size, o.grad_clip)
        engines.configure_fsdp(acc, self.backbone)
        self.model, self.optimizer = acc.prepare(self.backbone, optimizer)
        # `accelerate launch --gradient_accumulation_steps` and a DeepSpeed config override the
        # value passed above; a silent mismatch would change the effective batch
        if acc.gradient_accumulation_steps != o.grad_accum:
            raise ValueError(
                f"optim.grad_accum is {o.grad_accum} but the launcher (accelerate launch "
                f"--gradient_accumulation_steps or the DeepSpeed config) sets "
                f"{acc.gradient_accumulation_steps}; make them agree"
            )

    def _setup_ema(self) -> WeightsEMA | None:
        """The EMA of the trainable weights when ``optim.ema_decay`` is set (segros.train.ema;
        under FSDP2 of each process's shards); refused under FSDP1 and ZeRO-3."""
        o = self.cfg.optim
        if o.ema_decay is None:
            return None
        if self.engine in ("fsdp1", "zero3"):
            raise ValueError(
                f"optim.ema_decay is not supported under {self.engine}, whose sharded weights it cannot "
                "follow: train with FSDP2, DDP, ZeRO-1 or ZeRO-2, or without optim.ema_decay"
            )
        params = {name: p for name, p in self.backbone.named_parameters() if p.requires_grad}
        return WeightsEMA(params, o.ema_decay, device=o.ema_device, every=o.ema_every)

    def _setup_data(self) -> None:
        """The image-caption stream (from images or a ``segros cache``) and, when the I2T term is
        on, the image-to-text stream; each sharded over processes without duplication."""
        cfg, d, backbone = self.cfg, self.cfg.data, self.backbone
        self.budget = BadRecordBudget(max_share=d.max_bad_share)
        if d.streaming:  # an iterable source: batches with RecordBatches' interface (segros.data.streaming)
            self.t2i = streaming_batches(d, cfg.run.seed, self.rank, self.world, self.budget)
        else:
            # pre-encoded by `segros cache` (refused unless made with these encoders and data), or read
            t2i = open_cache(d.cache, backbone, d, cfg.model["name"]) if d.cache else t2i_source(d, backbone)
            self.t2i = RecordBatches(
                t2i,
                ShardedOrder(len(t2i), cfg.run.seed, d.shuffle, self.rank, self.world),
                d.batch_size,
                self.budget,
            )
        self.i2t: RecordBatches | None = None
        if cfg.method.i2t_weight > 0:
            i2t = i2t_source(d, backbone)
            if i2t is not None:
                order = ShardedOrder(len(i2t), cfg.run.seed + 1, d.shuffle, self.rank, self.world)
                self.i2t = RecordBatches(
                    i2t, order, d.i2t_batch_size or d.batch_size, BadRecordBudget(max_share=d.max_bad_share)
                )
        # what the loop reads: the same batches collated (text, pixels) in loader workers, or here
        # with data.workers=0; self.t2i / self.i2t stay the record streams whose state is saved
        self.workers = default_workers() if d.workers is None else d.workers
        cat = partial(T2IBatch.cat, pad_id=backbone.pad_id)
        self.t2i_batches = collated_batches(self.t2i, backbone.collate_t2i, cat, self.workers, d.prefetch)
        self.i2t_batches = None
        if self.i2t is not None:
            cat = partial(I2TBatch.cat, pad_id=backbone.pad_id)
            self.i2t_batches = collated_batches(self.i2t, backbone.collate_i2t, cat, self.workers, d.prefetch)

    def close_data(self) -> None:
        """Stop the loader workers (the next step starts them again, from the saved position)."""
        for batches in (self.t2i_batches, self.i2t_batches):
            if batches is not None:
                batches.close()
        self._iterators = None

    # --- checkpoints ----------------------------------------------------------------------------
    def train_seconds(self) -> float:
        """Wall time spent training this run so far, including the runs it resumed from."""
        return self.seconds_before + (time.perf_counter() - self.run_start if self.run_start else 0.0)

    def save(self) -> Path | None:
        """Write the checkpoint of this step (:meth:`Checkpointer.save`; every process takes part)."""
        return self.checkpoints.save(self.step, self.skipped_steps, self.train_seconds())

    # --- one step ---------------------------------------------------------------------------------
    def plan_for(self, batch: T2IBatch) -> SupervisionPlan:
        """Masking ratios -> grounding embeddings -> supervision plan (Secs. 3.2-3.4)."""
        method = self.cfg.method
        ratio = sample_ratio(
            self.backbone, len(batch), self.generator, method.mask_schedule, method.mask_per_batch
        )
        plan = ground_and_plan(self.backbone, batch, self.plan_cfg, ratio, self.generator, model=self.model)
        return plan.to(self.accelerator.device)

    def _next_batches(self, t2i_iter, i2t_iter) -> tuple[T2IBatch, I2TBatch | None]:
        """The next collated CPU batches, timed as the loop's wait for data. The iterators yield
        collated batches (``t2i_batches``); lists of records (``iter(self.t2i)``) are collated here."""
        start = time.perf_counter()
        t2i = next(t2i_iter)
        t2i = self.backbone.collate_t2i(t2i) if isinstance(t2i, list) else t2i
        i2t = next(i2t_iter) if i2t_iter else None
        i2t = self.backbone.collate_i2t(i2t) if isinstance(i2t, list) else i2t
        self.report.waited(time.perf_counter() - start)
        return t2i, i2t

    def _micro_batch(self, t2i_iter, i2t_iter) -> tuple[T2IBatch, SupervisionPlan, I2TBatch | None]:
        device = self.accelerator.device
        batch, i2t = self._next_batches(t2i_iter, i2t_iter)
        batch = self.backbone.encode_t2i(batch.to(device))  # the frozen encoders, on the device
        batch = self.backbone.drop_captions(batch, self.generator)  # classifier-free guidance training
        plan = self.plan_for(batch)
        i2t = self.backbone.encode_i2t(i2t.to(device)) if i2t is not None else None
        return batch, plan, i2t

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """True only if the loss is finite on every process (they must agree before backward)."""
        bad = torch.tensor(
            [0.0 if bool(torch.isfinite(loss.detach())) else 1.0], device=self.accelerator.device
        )
        return self.accelerator.reduce(bad, "sum").item() == 0

    def params_in_sync(self) -> bool | None:
        """Whether every process holds the same weights, bit for bit (the DDP invariant); None when
        the engine shards them (each process holds a different part). Hashes tensor by tensor
        (:mod:`segros.train.fingerprint`): no copy of the model is made."""
        if engines.is_fsdp(self.engine) or self.engine == "zero3" or is_sharded(self.backbone):
            return None
        names, digests = fingerprint(self.backbone)
        every = self.accelerator.gather(digests.to(self.accelerator.device).unsqueeze(0)).cpu()
        differ = (every != every[0]).any(0)
        if differ.any():
            named = [n for n, d in zip(names, differ.tolist(), strict=True) if d]
            log.error("parameters that differ between processes (first 10): %s", named[:10])
        return not bool(differ.any())

    def peak_memory(self) -> dict[str, float]:
        """Peak memory (MiB) of the most demanding process (:mod:`segros.train.memory`)."""
        mine = peak_memory(self.accelerator.device)
        values = torch.tensor([list(mine.values())], dtype=torch.float64, device=self.accelerator.device)
        peaks = self.accelerator.gather(values).amax(0).tolist()
        return {k: round(v, 1) for k, v in zip(mine, peaks, strict=True)}

    def train_step(self) -> StepOutput:
        """One optimizer step: ``optim.grad_accum`` micro-batches (plan, loss, backward), then
        the update, or none when a loss was not finite on some process (counted as skipped)."""
        cfg, acc = self.cfg, self.accelerator
        lam, accum = cfg.method.i2t_weight, cfg.optim.grad_accum
        if self._iterators is None:
            self._iterators = (
                iter(self.t2i_batches),
                iter(self.i2t_batches) if self.i2t_batches is not None else None,
            )
        out = StepOutput(losses={}, skipped=False)
        for micro in range(accum):
            # every micro-batch enters accumulate(), even after a bad one, so accelerate's count
            # of micro-batches (and DeepSpeed's boundary) stays in phase with the groups
            with acc.accumulate(self.model), acc.autocast():
                if out.skipped:
                    continue
                out.batch, out.plan, i2t = self._micro_batch(*self._iterators)
                terms = self.model(out.batch, plan=out.plan, i2t=i2t)
                loss = total_loss(terms["recon"], terms.get("i2t", 0.0), lam)  # Eq. 13
                for k, v in {**terms, "total": loss}.items():
                    out.losses[k] = out.losses.get(k, 0.0) + float(v.detach()) / accum
                if not self._all_finite(loss):
                    if refusal := engines.skip_unsupported(acc, micro):
                        raise TrainingDivergedError(f"step {self.step}: {refusal}")
                    out.skipped = True
                    continue
                acc.backward(loss)  # divided by grad_accum inside (or by DeepSpeed)
        if out.skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
        else:
            if cfg.optim.grad_clip is not None:
                # under DeepSpeed its engine clipped (gradient_clipping) and reports the norm
                norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                out.grad_norm = engines.grad_norm(norm)
            self.optimizer.step()
            # not after a step fp16's gradient scaler skipped (inf gradients): nothing was updated
            if self.ema is not None and self.ema.due(self.step + 1) and not self.optimizer.step_was_skipped:
                self.ema.update()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return out

    def _due(self, every: int) -> bool:
        return bool(every) and (self.step % every == 0)

    def _release_ddp(self) -> None:
        """Free the DDP wrapper, and with it its reducer, while the process group is still registered.

        The gloo worker thread that ran the last collectives frees their work objects, whose Python
        tensors it can only release with the GIL. A process group destroyed from the reducer's
        destructor joins that thread while holding the GIL, which deadlocks when the worker has not
        freed them yet (py-spy: ~Reducer -> ~ProcessGroupGloo -> join, the worker in
        gil_scoped_acquire; 1 run in 12 of the two-process Show-o test hung). Freed here, the
        reducer only drops a reference; ``end_training`` then destroys the group through its Python
        handle, whose destructor releases the GIL while it joins.
        """
        self.model = self.accelerator.unwrap_model(self.model)
        self.accelerator.free_memory()  # its own references to the wrapper, then a garbage collection

    def run(self) -> TrainResult:
        """Train to ``run.max_steps``: step, log, draw and checkpoint on their schedules.

        SIGTERM or Ctrl-C (:mod:`segros.train.stopping`) stop it at the next step boundary, the
        same one on every process: it saves a checkpoint there and returns with ``stopped_by``.
        The run folder's lock is released when this returns or raises.
        """
        r = self.cfg.run
        result = TrainResult(self.out_dir, self.step)
        start = self.run_start = time.perf_counter()
        progress = self.report.progress(self.step)
        window_start, window_steps, bad_in_row = time.perf_counter(), 0, 0
        # however the run ends, the folder's lock (main process) is released, the signal handlers restored
        with self.folder_lock or contextlib.nullcontext(), StopSignals() as signals:
            log.info("training steps %d to %d in %s", self.step + 1, r.max_steps, self.out_dir)
            while self.step < r.max_steps:
                out = self.train_step()
                bad_in_row = bad_in_row + 1 if out.skipped else 0
                if out.skipped:
                    self._bad_step(bad_in_row)
                window_steps += 1
                result.losses.append(out.loss)
                progress.update(1)
                progress.set_postfix(loss=f"{out.losses['total']:.3f}", refresh=False)
                if self._due(r.log_every) or self.step == r.max_steps:
                    counters = {"lr": self.scheduler.get_last_lr()[0], "skipped_steps": self.skipped_steps}
                    seconds = time.perf_counter() - window_start
                    self.report.log(out, self.step, window_steps, seconds, budget=self.budget, **counters)
                    window_start, window_steps = time.perf_counter(), 0
                if self._due(r.picture_every):
                    self.report.pictures(out, self.backbone, self.step)
                # never checkpoint right after a skipped step: the last good checkpoint stays latest
                saved = not out.skipped and (self._due(r.save_every) or self.step == r.max_steps)
                if saved:
                    self.save()
                stop = self._agreed_stop(signals)
                if stop and self.step < r.max_steps:
                    if not saved and not out.skipped:
                        self.save()
                    result.stopped_by = stop
                    break
            progress.close()
            return self.finish(result, time.perf_counter() - start)

    def _agreed_stop(self, signals: StopSignals) -> str | None:
        """The stop signal's name if any process received one (all stop at the same step)."""
        code = int(signals.received or 0)
        if self.world > 1:
            acc = self.accelerator
            code = int(acc.reduce(torch.tensor([code], device=acc.device), "max").item())
        return signal.Signals(code).name if code else None

    def _bad_step(self, in_row: int) -> None:
        """Warn of a skipped step; stop the run after ``run.max_bad_steps`` in a row."""
        log.warning("step %d: non-finite loss, update skipped (%d in a row)", self.step - 1, in_row)
        if in_row >= self.cfg.run.max_bad_steps:
            last = ckpt.latest_checkpoint(self.out_dir)
            raise TrainingDivergedError(
                f"{in_row} steps in a row had a NaN/inf loss (step {self.step - 1}); stopping. "
                f"Last good checkpoint: {last or 'none saved yet'}"
            )

    def finish(self, result: TrainResult, seconds: float) -> TrainResult:
        """Fill in the result, check the processes agree, write ``train_summary.json``."""
        result.step = self.step
        result.skipped_steps = self.skipped_steps
        result.bad_records = self.budget.bad_records
        result.seconds = seconds
        result.total_seconds = self.train_seconds()
        if self.budget.bad:
            log.warning("skipped bad records: %s", self.budget.summary())
        in_sync = self.params_in_sync()
        peaks = self.peak_memory()
        if in_sync is False:
            log.error("parameters differ between processes: the distributed set-up is broken")
        if self.accelerator.is_main_process:
            self.report.summary(
                result,
                self.budget,
                data_workers=self.workers,
                params_in_sync=in_sync,
                **peaks,
                lora_rank=self.cfg.lora.rank if self.lora else 0,
                **lora.parameter_counts(self.backbone),
            )
        self.accelerator.wait_for_everyone()  # every process is past the last collective
        self.close_data()
        self._release_ddp()
        # finishes the trackers and destroys the process group, also when logging is off: a gloo group
        # left to the interpreter's exit sometimes aborts a process ("terminate called without an
        # active exception") after its run has finished
        self.accelerator.end_training()
        return result


def grounding_stats(plan: SupervisionPlan) -> dict[str, float]:
    """Mean grounding score m-bar of hint, seen and masked tokens (what the plan selected)."""
    g = plan.grounding
    if g is None:
        return {}
    scores = g.scores
    stats = {
        "grounding/seen_mean": float(scores[plan.seen].mean()) if plan.seen.any() else float("nan"),
        "grounding/masked_mean": float(scores[~plan.seen].mean()) if (~plan.seen).any() else float("nan"),
        "grounding/text_kept": float(g.text_keep.sum(1).float().mean()),
    }
    if plan.num_hints and plan.hint_grid is None:
        stats["grounding/hint_mean"] = float(scores.gather(1, plan.hint_idx).mean())
    return stats


def train(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, pictures: PictureCallback | None = None
) -> TrainResult:
    """Train as ``cfg`` says, writing checkpoints, logs and pictures under ``out_dir``."""
    return Trainer(cfg, out_dir, resume=resume, pictures=pictures).run()


def train_to_end(cfg: TrainConfig, out_dir: str | Path, pictures: PictureCallback | None = None) -> Path:
    """The run's final checkpoint: reused if one reached ``run.max_steps``, else trained now,
    continuing from the newest intact checkpoint when there is one. A stop by SIGTERM or Ctrl-C
    raises :class:`RunStoppedError`, so that nothing goes on with an unfinished run."""
    if not ckpt.finished(out_dir, cfg.run.max_steps):
        result = train(cfg, out_dir, resume=ckpt.latest_checkpoint(out_dir) is not None, pictures=pictures)
        if result.stopped_by:
            raise RunStoppedError(
                f"{out_dir}: stopped by {result.stopped_by} after step {result.step} of "
                f"{cfg.run.max_steps}, checkpoint {ckpt.latest_checkpoint(out_dir)}; "
                "the same command continues from it",
                EXIT_CODES[signal.Signals[result.stopped_by]],
            )
    return ckpt.latest_checkpoint(out_dir)
