"""What a training run reports: curves, pictures, the progress bar and ``train_summary.json``.

:class:`RunReport` is the trainer's logging, apart from the step: every ``run.log_every`` steps the
scalars of the last step (loss terms, lr, grad norm, throughput, the wait for data, bad records,
grounding statistics), every ``run.picture_every`` steps the grounding panel and the application's
pictures (through :class:`~segros.train.logger.RunLogger`'s trackers and PNG files), and at the end
the run's summary. It also counts the time the step waited for batches (:meth:`waited`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from segros.train.logger import PictureCallback, RunLogger


def _show_progress(setting: bool | str) -> bool:
    if setting != "auto":
        return bool(setting)
    return sys.stderr.isatty() and not os.environ.get("CI")


class RunReport:
    """The reporting of one run in ``out_dir`` (scalars and pictures from the main process).

    ``pictures``: what to draw every ``run.picture_every`` steps besides the grounding panel of
    the current batch, e.g. :func:`~segros.train.logger.sample_pictures` of some prompts.
    """

    def __init__(
        self, accelerator: Any, cfg: Any, out_dir: Path, engine: str, pictures: PictureCallback | None = None
    ) -> None:
        self.accelerator, self.cfg, self.out_dir, self.engine = accelerator, cfg, out_dir, engine
        self.picture_callback = pictures
        self.logger = RunLogger(accelerator, cfg, out_dir)
        self.data_wait = self.data_wait_window = 0.0  # seconds the step waited for batches

    def waited(self, seconds: float) -> None:
        """Count ``seconds`` the step waited for its batches (``data_wait_share``)."""
        self.data_wait += seconds
        self.data_wait_window += seconds

    def progress(self, step: int) -> Any:
        """The progress bar from ``step`` to ``run.max_steps`` (main process, on a terminal)."""
        r = self.cfg.run
        return tqdm(
            total=r.max_steps,
            initial=step,
            disable=not (_show_progress(r.progress) and self.accelerator.is_main_process),
            desc=f"train {self.cfg.method.preset}",
            dynamic_ncols=True,
        )

    def log(self, out: Any, step: int, steps: int, seconds: float, **counters: Any) -> None:
        """Scalars of the last step ``out`` (loss terms, grad norm, grounding statistics), the
        throughput over the ``steps`` steps of the last ``seconds``, and ``counters``: ``lr``,
        ``budget`` (the bad-record budget) and ``skipped_steps``."""
        world = self.accelerator.num_processes
        samples = steps * self.cfg.optim.grad_accum * self.cfg.data.batch_size * world
        budget = counters["budget"]
        scalars = {f"loss/{k}": v for k, v in out.losses.items()}
        scalars |= {
            "lr": counters["lr"],
            "grad_norm": out.grad_norm,
            "steps_per_second": steps / max(seconds, 1e-9),
            "samples_per_second": samples / max(seconds, 1e-9),
            "data_wait_share": self.data_wait_window / max(seconds, 1e-9),  # waiting for batches
            "data/bad_records": budget.bad_records,  # distinct records
            "data/skipped_reads": budget.bad,
            "train/skipped_steps": counters["skipped_steps"],
        }
        self.logger.scalars(scalars | out.grounding, step)
        self.data_wait_window = 0.0

    def pictures(self, out: Any, backbone: Any, step: int) -> None:
        """The grounding panel of the step's batch and the application's pictures (main process;
        not under FSDP and ZeRO-3, whose sharded weights one process cannot sample from: generate
        from a checkpoint's consolidated weights instead)."""
        if not self.accelerator.is_main_process:
            return
        if out.batch is not None and out.plan is not None:
            self.logger.grounding_picture(backbone, out.batch, out.plan, step)
        if self.picture_callback is not None and self.engine in ("single", "ddp", "zero1", "zero2"):
            for tag, picture in self.picture_callback(backbone, step).items():
                self.logger.image(tag, picture, step)

    def summary(self, result: Any, budget: Any, **facts: Any) -> dict[str, Any]:
        """``train_summary.json`` (main process): the ``result`` of the run, its ``budget`` of bad
        records and the trainer's ``facts`` (workers, agreement, memory, LoRA), in this order."""
        summary = {
            "step": result.step,
            "stopped_by": result.stopped_by,
            "skipped_steps": result.skipped_steps,
            "bad_records": budget.bad_records,
            "skipped_reads": budget.bad,
            "seconds": round(result.seconds, 2),
            "data_wait_share": round(self.data_wait / max(result.seconds, 1e-9), 4),
            "data_workers": facts.pop("data_workers"),
            "total_seconds": round(result.total_seconds, 2),
            "final_loss": result.losses[-1] if result.losses else None,
            "processes": self.accelerator.num_processes,
            **facts,
        }
        (self.out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        return summary
