"""Memory and step time of SeGroS fine-tuning at the backbones' real sizes, with random weights.

For each backbone, at the published architecture (no download: random weights, a word-level
tokenizer padded to the real vocabulary, ShapesWorld images at the model's resolution):

- Harmon-0.5B, full fine-tuning (``configs/harmon/segros-0.5b.yaml``: LLM + MAR trained);
- Show-o (Phi-1.5, 1.3B, the VQ variant) with LoRA rank 16 on the attention projections;
- OpenUni-B-512 (``configs/openuni/segros-1.6b.yaml``: SANA-0.6B trained, InternVL3-1B frozen).

The model is first built on the meta device (no memory) to count parameters and give an analytic
estimate: fp32 weights + fp32 gradients and AdamW's two fp32 moments for the trained parameters +
the bf16 copies autocast keeps of the trained weights + activations (a rough 34 bytes per token and
hidden unit per layer at 2-byte activations, Korthikanti et al. 2022, attention scores left out as
SDPA does not store them; with gradient checkpointing 2 bytes per layer plus one layer's 34). Then
the real ``segros.train.loop.Trainer`` (the shipped config, built in code; the weights drawn by the
backbone's own random initialisation, as ``init_from: null`` does) trains 2 steps of ``sft`` and 2
of ``segros`` and saves, each run in its own process so that its peak resident memory
(``train_summary.json: peak_rss_mib``, and ``peak_cuda_allocated_mib`` on a GPU) is its own; a third
process resumes the SeGroS run for one step and saves; a fourth exports it (LoRA: ``segros export
--merge``; full fine-tuning: the checkpoint loaded and written as a model folder).

    python benchmarks/real_size.py                      # real sizes, CPU: 26 min, 16 GiB peak here
    python benchmarks/real_size.py --device cuda        # the same on a GPU, + tokens/s and segros/sft
    python benchmarks/real_size.py --tiny               # the tiny sizes (what the tests run)
    python benchmarks/real_size.py --backbones harmon --image-size 128 --batch 1

Precision: bf16 autocast (the shipped configs' ``mixed_precision``) on a GPU and on a CPU with bf16
arithmetic (AVX512-BF16 / AMX). On an AVX2-only CPU oneDNN emulates bf16 (a bf16-autocast linear layer
ran ~7x slower than fp32 on the 2-core machine this was written on, and a Harmon-0.5B step at 64 px
did not finish in 5 minutes), so there ``--precision auto`` trains in fp32; ``--precision bf16``
forces autocast. The CPU run also uses 64 px images (``--image-size``; the models' own sizes are 512,
256 and 512 px, the ``--device cuda`` default): weights, gradients and optimizer state do not depend
on the image size, activations do. Both are printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
GIB = 2**30
MIB = 2**20
BACKBONES = ("harmon", "showo", "openuni")
LABELS = {"harmon": "Harmon-0.5B full", "showo": "Show-o 1.3B LoRA-16", "openuni": "OpenUni-B-512"}
CONFIGS = {
    "harmon": "configs/harmon/segros-0.5b.yaml",
    "showo": "configs/showo/segros-256.yaml",
    "openuni": "configs/openuni/segros-1.6b.yaml",
}
REAL_IMAGE_SIZE = {"harmon": 512, "showo": 256, "openuni": 512}
# what the full CPU run uses by default (bf16 on an AVX2 CPU is slow; see the module docstring)
CPU_IMAGE_SIZE = {"harmon": 64, "showo": 64, "openuni": 64}
PHI_TEXT_VOCAB = 50_295  # Phi-1.5's tokenizer before Show-o's [PAD] and nine added tokens
LORA_RANK = 16

# the tiny sizes the tests use (tests/showo_helpers.py, harmon size "tiny", openuni size "tiny")
TINY_SHOWO_ARCH = {
    "showo": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    "magvit": {"ch": 8, "encoder_ch_mult": [1, 2, 2], "encoder_res_blocks": [1, 1, 1],
               "decoder_ch_mult": [1, 2, 2], "decoder_res_blocks": [1, 1, 1], "z_channels": 4,
               "norm_groups": 4},
}  # fmt: skip
TINY_IMAGE_SIZE = {"harmon": 64, "showo": 32, "openuni": 32}


# --- tokenizers (no download) ---------------------------------------------------------------------
def _words() -> list[str]:
    from segros.data.shapes import vocabulary
    from segros.data.sources import SHAPES_QUESTIONS

    words = {w for q in SHAPES_QUESTIONS for w in q.split()} | set(vocabulary())
    return sorted(words | {"user", "assistant", ":", "what", "is", "this", ".", ","})


def make_tokenizer(name: str, folder: Path, tiny: bool) -> Path:
    """A word-level tokenizer for ``name`` saved to ``folder``. Show-o's is padded with filler tokens
    to Phi-1.5's 50,295 entries, so the joint embedding table has its real 58,498 rows; Harmon's and
    OpenUni's LLM vocabularies are fixed by their configs whatever the tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "harmon":
        from segros.backbones.harmon.text import word_level_tokenizer

        word_level_tokenizer(_words(), folder)
    elif name == "openuni":
        from segros.backbones.openuni.text import word_level_tokenizer

        word_level_tokenizer(_words(), folder)
    else:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {"<|endoftext|>": 0, "[UNK]": 1}
        for w in _words():
            vocab.setdefault(w, len(vocab))
        size = len(vocab) if tiny else PHI_TEXT_VOCAB
        for i in range(size - len(vocab)):
            vocab[f"<filler{i}>"] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="[UNK]"
        )
        fast.save_pretrained(str(folder))
    return folder


# --- the config users run, offline -----------------------------------------------------------------
def raw_config(name: str, preset: str, args: argparse.Namespace, tokenizer: Path, steps: int) -> dict:
    """The shipped config of ``name`` with random weights, ShapesWorld data and this benchmark's
    batch, steps and preset; everything else (precision, optimizer, checkpointing) as shipped."""
    from segros.train.config import read_config

    raw = read_config(CONFIGS[name])[0]  # the shipped file (segros/configs), its base: files merged
    model = raw["model"]
    model.update(init_from=None, tokenizer=str(tokenizer), image_size=args.image_size[name])
    if name == "showo":  # the VQ variant: no CLIP tower to download or to build
        for key in ("magvit", "clip"):
            model.pop(key, None)
        model["hint_source"] = "codes"
        raw["optim"]["freeze"] = []
        raw["lora"] = {"rank": LORA_RANK}
        if args.tiny:
            model["arch"] = TINY_SHOWO_ARCH
            model["max_text_len"] = 16
    elif args.tiny:
        model["size"] = "tiny"
    if name == "openuni":
        model.pop("stage", None)
    if name == "harmon" and args.tiny:
        model.update(diffusion_batch_mul=2, max_text_len=80)
    i2t = "none" if raw["method"].get("i2t_weight", 1.0) == 0 else "shapes"
    raw["method"] = {"preset": preset, "i2t_weight": raw["method"].get("i2t_weight", 1.0)}
    raw["data"] = {"source": "shapes", "i2t": i2t, "batch_size": args.batch, "shuffle": False}
    precision = "bf16" if args.precision == "bf16" else "no"
    raw["optim"].update(grad_accum=1, warmup_steps=0, mixed_precision=precision)
    raw["run"] = {"seed": 0, "max_steps": steps, "save_every": steps, "keep_last": 1, "log_every": 1,
                  "picture_every": 0, "progress": False}  # fmt: skip
    raw["logging"] = {"tensorboard": False}
    return raw


# --- the meta-device count and the estimate ---------------------------------------------------------
def _stacks(name: str, backbone: Any, batch: int) -> list[tuple[int, int, int, bool]]:
    """(layers, hidden, tokens per step, checkpointed) of every transformer stack the backward
    crosses, at this image size, a 128-token prompt and SeGroS's 30 % hints."""
    n, text = backbone.num_tokens, backbone.options.max_text_len
    hints = int(0.3 * n)
    ckpt = bool(getattr(backbone.options, "gradient_checkpointing", False))
    if name == "harmon":
        llm, mar = backbone.cfg.llm, backbone.cfg.mar
        buf = mar.buffer_size
        seen = n // 3 + buf  # the MAR encoder keeps the visible third (truncnorm gamma ~ 0.7-1)
        return [
            (llm["num_hidden_layers"], llm["hidden_size"], batch * (hints + text + seen), ckpt),
            (llm["num_hidden_layers"], llm["hidden_size"], batch * (n + buf + text), ckpt),  # I2T
            (mar.encoder_depth, mar.encoder_embed_dim, 2 * batch * (n + buf), ckpt),
            (mar.decoder_depth, mar.decoder_embed_dim, batch * (n + buf), ckpt),
            (mar.diffloss_d, mar.diffloss_w, batch * n * backbone.options.diffusion_batch_mul, ckpt),
        ]
    if name == "showo":
        c = backbone.model.showo.config
        return [
            (c.num_hidden_layers, c.hidden_size, batch * (hints + text + n + 3), ckpt),
            (c.num_hidden_layers, c.hidden_size, batch * (n + text + 3), ckpt),  # I2T
        ]
    lm = backbone.mllm.config.text_config
    sana = backbone.model.config
    sana_tokens = backbone.latent_grid[0] * backbone.latent_grid[1]
    width = sana.num_attention_heads * sana.attention_head_dim
    return [
        (lm.num_hidden_layers, lm.hidden_size, batch * (hints + text + backbone.arch["num_queries"]), ckpt),
        (sana.num_layers, width, batch * sana_tokens, ckpt),
    ]


def meta_count(name: str, cfg: Any) -> dict[str, Any]:
    """Parameters trained / total, weight bytes and the analytic estimate, from a model built on
    the meta device exactly as the trainer builds it (LoRA and freezing applied): no memory used."""
    from segros.backbones import lora
    from segros.backbones.registry import build_backbone
    from segros.train.loop import freeze

    with torch.device("meta"):
        backbone = build_backbone(cfg.model_options())
        if cfg.lora is not None and cfg.lora.enabled:
            lora.apply_section(backbone, cfg.lora)
        freeze(backbone, cfg.optim.freeze)
    tensors = {id(t): t for t in [*backbone.parameters(), *backbone.buffers()]}
    if name == "harmon":  # the VAE is held outside the module tree
        tensors |= {id(t): t for t in [*backbone.vae.parameters(), *backbone.vae.buffers()]}
    weights = sum(t.numel() * t.element_size() for t in tensors.values())
    counts = lora.parameter_counts(backbone)
    trained = counts["trainable_params"]
    bf16 = cfg.optim.mixed_precision == "bf16"
    scale = 1 if bf16 else 2  # the 34 bytes are for 2-byte activations
    acts = 0
    for layers, hidden, tokens, ckpt in _stacks(name, backbone, cfg.data.batch_size):
        per_layer = 34 * tokens * hidden * scale
        acts += (2 * scale * tokens * hidden * layers + per_layer) if ckpt else per_layer * layers
    parts = {"weights": weights, "grads": 4 * trained, "adamw": 8 * trained, "casts": 2 * trained * bf16,
             "activations": acts}  # fmt: skip
    return {**counts, "estimate_parts_gib": {k: v / GIB for k, v in parts.items()},
            "estimate_gib": sum(parts.values()) / GIB}  # fmt: skip


# --- one process: train, resume or export -----------------------------------------------------------
def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def train_stage(name: str, preset: str, args: argparse.Namespace, work: Path, resume: bool) -> dict:
    """Train (or resume and train one more step) with the real Trainer; what it measured."""
    from segros.train.checkpoint import latest_checkpoint
    from segros.train.config import validate
    from segros.train.loop import Trainer

    class TimedTrainer(Trainer):
        """The trainer, with each optimizer step's wall time and token count kept."""

        times: list[float]
        tokens: list[int]

        def train_step(self):  # noqa: ANN201
            start = time.perf_counter()
            out = super().train_step()
            if self.accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - start)
            print(f"    step {self.step}: {self.times[-1]:.1f} s", file=sys.stderr, flush=True)
            b = out.batch
            self.tokens.append(int(b.text_mask.sum()) + len(b) * self.backbone.num_tokens)
            return out

    tokenizer = work / "tokenizer"
    steps = args.steps + 1 if resume else args.steps
    cfg = validate(raw_config(name, preset, args, tokenizer, steps))
    out_dir = work / preset
    result: dict[str, Any] = {"stage": f"{preset}-resume" if resume else preset}
    if preset == "segros" and not resume:
        result["count"] = meta_count(name, cfg)
    start = time.perf_counter()
    trainer = TimedTrainer(cfg, out_dir, resume=resume)
    trainer.times, trainer.tokens = [], []
    result["build_seconds"] = time.perf_counter() - start
    trainer.run()
    summary = json.loads((out_dir / "train_summary.json").read_text())
    result |= {
        "step_seconds": trainer.times,
        "tokens": trainer.tokens,
        "losses": summary["final_loss"],
        "params_in_sync": summary["params_in_sync"],
        "peak_rss_mib": summary["peak_rss_mib"],
        "peak_cuda_allocated_mib": summary.get("peak_cuda_allocated_mib"),
        "checkpoint_bytes": _folder_bytes(latest_checkpoint(out_dir)),
        "step": summary["step"],
    }
    return result


def export_stage(name: str, work: Path) -> dict:
    """The resumed SeGroS run exported as a plain model folder, as generate / eval read it."""
    import argparse as ap

    from segros import export
    from segros.backbones.lora import has_adapter
    from segros.backbones.registry import load_backbone
    from segros.train.checkpoint import latest_checkpoint
    from segros.train.memory import peak_rss_bytes

    folder = latest_checkpoint(work / "segros")
    out = work / "exported"
    start = time.perf_counter()
    if has_adapter(folder):  # `segros export --merge RUN --out DIR`, parsed as the command parses it
        parser = ap.ArgumentParser()
        export.add_arguments(parser)
        export.run(parser.parse_args([str(work / "segros"), "--out", str(out), "--merge"]))
    else:
        load_backbone(folder).save_pretrained(out)
    peaks = {"peak_rss_mib": peak_rss_bytes() / MIB}
    if torch.cuda.is_available():
        peaks["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
    return {"stage": "export", "seconds": time.perf_counter() - start, "bytes": _folder_bytes(out), **peaks}


def worker(args: argparse.Namespace) -> dict:
    name, stage, work = args.worker, args.stage, Path(args.work)
    torch.manual_seed(0)
    if stage == "export":
        return export_stage(name, work)
    preset, _, resume = stage.partition("-")
    return train_stage(name, preset, args, work, resume=bool(resume))


# --- the parent: one process per stage, then the table ------------------------------------------------
STAGES = ("sft", "segros", "segros-resume", "export")


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps)]
    out += ["--precision", args.precision]
    out += ["--image-size", *(f"{k}={v}" for k, v in args.image_size.items())]
    return out + (["--tiny"] if args.tiny else [])


def run_stage(name: str, stage: str, args: argparse.Namespace, work: Path) -> dict:
    if args.inline:  # one process for everything (the tests: fast, but peaks are the process's)
        ns = argparse.Namespace(**{**vars(args), "worker": name, "stage": stage, "work": str(work)})
        return worker(ns)
    cmd = [sys.executable, __file__, "--worker", name, "--stage", stage, "--work", str(work)]
    cmd += _forwarded(args)
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} {stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(name: str, args: argparse.Namespace, root: Path) -> dict:
    """Every stage of one backbone, in order; a failed stage (e.g. out of memory) is recorded and
    the stages that need it are skipped, so the other backbones still run."""
    work = root / name
    make_tokenizer(name, work / "tokenizer", args.tiny)
    stages: dict[str, dict] = {}
    for stage in STAGES:
        if stage != "sft" and "error" in stages.get("segros", {}):
            stages[stage] = {"error": "skipped: the segros stage failed"}
            continue
        t0 = time.perf_counter()
        try:
            stages[stage] = run_stage(name, stage, args, work)
        except RuntimeError as err:
            if args.inline:
                raise
            stages[stage] = {"error": str(err)}
        stages[stage]["wall_seconds"] = time.perf_counter() - t0
        print(f"  {name} {stage}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return stages


def _step(times: list[float]) -> float:
    """Step time: the median of the steps after the first (the first warms kernels up)."""
    return statistics.median(times[1:] or times)


def _cell(fn: Any) -> str:
    try:
        return fn()
    except (KeyError, TypeError):  # a stage that failed or was skipped
        return "failed"


def _row(name: str, st: dict, args: argparse.Namespace, peak_key: str) -> list[str]:
    """One backbone's table row; "failed" where a stage failed or was skipped."""
    c = st["segros"].get("count", {})

    def sft() -> float:
        return _step(st["sft"]["step_seconds"])

    def seg() -> float:
        return _step(st["segros"]["step_seconds"])

    def tokens() -> float:
        return statistics.median(st["segros"]["tokens"][1:] or st["segros"]["tokens"])

    row = [
        LABELS[name] if not args.tiny else f"{name} tiny",
        str(args.image_size[name]),
        _cell(lambda: f"{c['trainable_params'] / 1e6:,.1f}M / {c['total_params'] / 1e6:,.1f}M"),
        _cell(lambda: f"{c['estimate_gib']:.1f}"),
        " / ".join(_cell(lambda s=s: f"{st[s][peak_key] / 1024:.1f}") for s in STAGES),
        f"{_cell(lambda: f'{sft():.2f}')} / {_cell(lambda: f'{seg():.2f}')}",
        _cell(lambda: f"{st['segros']['checkpoint_bytes'] / GIB:.2f}"),
    ]
    if args.device == "cuda":
        row += [_cell(lambda: f"{tokens() / seg():,.0f}"), _cell(lambda: f"{seg() / sft():.2f}")]
    return row


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    cuda = args.device == "cuda"
    peak_key = "peak_cuda_allocated_mib" if cuda else "peak_rss_mib"
    head = ["backbone", "px", "trained / total params", "estimate GiB",
            "peak GiB sft / segros / resume / export", "step s sft / segros", "checkpoint GiB"]  # fmt: skip
    if cuda:
        head += ["segros tokens/s", "segros / sft"]
    rows = [head] + [_row(name, st, args, peak_key) for name, st in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = []
    for name, st in results.items():
        if "count" in st["segros"]:
            parts = st["segros"]["count"]["estimate_parts_gib"]
            notes.append(f"estimate {name} (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
        for stage, result in st.items():
            if "error" in result:
                notes.append(f"{name} {stage} failed: {result['error'].strip().splitlines()[-1][:300]}")
    return "\n".join(lines + notes)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without it (AVX2) oneDNN
    emulates bf16, and a bf16-autocast linear layer ran ~7x slower than fp32 here."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _image_sizes(items: list[str], args: argparse.Namespace) -> dict[str, int]:
    base = TINY_IMAGE_SIZE if args.tiny else (REAL_IMAGE_SIZE if args.device == "cuda" else CPU_IMAGE_SIZE)
    sizes = dict(base)
    for item in items:
        if "=" in item:
            key, value = item.split("=")
            sizes[key] = int(value)
        else:
            sizes = dict.fromkeys(sizes, int(item))
    return sizes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tiny", action="store_true", help="the tiny test sizes (fast; what CI runs)")
    p.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bf16 autocast (as the shipped configs) or fp32; auto: bf16 on a GPU or a CPU "
                        "with bf16 arithmetic, else fp32")  # fmt: skip
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per method")
    p.add_argument("--image-size", nargs="*", default=[], metavar="[NAME=]PX",
                   help="image side for all backbones, or per backbone (harmon=256)")  # fmt: skip
    p.add_argument("--out", help="work folder (default: a temporary one, removed)")
    p.add_argument("--json", help="also write every measurement to this JSON file")
    p.add_argument("--inline", action="store_true", help="run every stage in this process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.image_size = _image_sizes(args.image_size, args)
    if args.precision == "auto":
        args.precision = "bf16" if args.device == "cuda" or cpu_has_bf16() else "fp32"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    with tempfile.TemporaryDirectory(prefix="segros-real-size-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        results = {name: measure(name, args, root) for name in args.backbones}
    precision = "bf16 autocast" if args.precision == "bf16" else "fp32"
    where = f"{args.device}, batch {args.batch}, {args.steps} steps per method, {precision}"
    sizes = "tiny sizes" if args.tiny else "real sizes"
    print(f"real_size ({sizes}; {where}; threads {torch.get_num_threads()})")
    print(table(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
