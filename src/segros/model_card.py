"""A model card for an exported segros run: README.md with YAML metadata, as the Hub shows it.

The card is built with huggingface_hub's ``ModelCard`` / ``ModelCardData`` and records what a
reader needs to know where the weights came from: backbone and method, every SeGroS setting of
the config (``method:``), the training data as the config names it, the step, seed and segros
version, and any evaluation summary found in the run folder (``summary.json`` files that
``segros eval`` writes, and ``validation.jsonl`` lines of ``segros validate``). The same facts go
into the metadata under ``segros:``, so a script can read them back without parsing the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

import segros

EVAL_FILES = ("summary.json",)  # segros eval's cached summaries, anywhere in the run folder
MAX_EVAL_FILES = 20


def run_root(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/step-N``), if it does."""
    checkpoint = checkpoint.resolve()
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "config.yaml").is_file():
        return checkpoint.parent.parent
    return None


def run_facts(checkpoint: Path) -> dict[str, Any]:
    """Step (``trainer_state.json``), the run's config (``config.yaml``) and evaluation summaries."""
    facts: dict[str, Any] = {"segros_version": segros.__version__}
    state = checkpoint / "trainer_state.json"
    if state.is_file():
        saved = json.loads(state.read_text())
        facts["step"] = saved.get("step")
        facts["ema_decay"] = saved.get("ema_decay")  # the run kept an EMA (optim.ema_decay)
    root = run_root(checkpoint)
    if root is None:
        return facts
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    facts["config"] = config
    facts["seed"] = (config.get("run") or {}).get("seed")
    facts["method"] = config.get("method") or {}
    plan = _resolved_plan(root / "config.yaml")
    if plan is not None:
        facts["plan"] = plan
    facts["data"] = _data_names(config.get("data") or {})
    evaluations = {}
    for name in EVAL_FILES:
        for file in sorted(root.rglob(name))[:MAX_EVAL_FILES]:
            try:
                evaluations[str(file.relative_to(root))] = json.loads(file.read_text())
            except ValueError:
                continue
    for file in sorted(root.rglob("validation.jsonl"))[:MAX_EVAL_FILES]:
        lines = [json.loads(x) for x in file.read_text().splitlines() if x.strip()]
        if lines:
            evaluations[str(file.relative_to(root))] = lines[-1]
    if evaluations:
        facts["evaluation"] = evaluations
    return facts


def _resolved_plan(config_file: Path) -> dict[str, Any] | None:
    """Every SeGroS knob as the run used it (the preset's values filled in), or None if the
    config no longer validates (written by another segros version)."""
    import dataclasses

    from segros.train.config import load_config

    try:
        plan = load_config(config_file).method.plan_config()
    except Exception:  # noqa: BLE001 - an old or foreign config: the raw method section still goes in
        return None
    return json.loads(json.dumps(dataclasses.asdict(plan), default=str))


def _data_names(data: dict[str, Any]) -> dict[str, Any]:
    """The training data as the config names it (source, path(s), split, columns)."""
    data = {**data, **(data.get("files") or {})}  # data.files.path (data.path in configs of before)
    keys = ("source", "path", "split", "image_column", "caption_column", "i2t", "i2t_path")
    names = {k: data[k] for k in keys if data.get(k) is not None}
    # ShapesWorld's seed: data.shapes.seed (data.shapes_seed in configs saved before it moved)
    seed = (data.get("shapes") or {}).get("seed", data.get("shapes_seed"))
    if seed is not None:
        names["shapes"] = {"seed": seed}
    return names


def _hub_ids(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    local = (".", "/", "~")
    return [v for v in values if isinstance(v, str) and v.count("/") == 1 and not v.startswith(local)]


def build_card(backbone_config: dict[str, Any], facts: dict[str, Any]) -> Any:
    """The ``ModelCard`` of an exported folder: ``backbone_config`` is its ``config.json``."""
    from huggingface_hub import ModelCard, ModelCardData

    backbone = backbone_config["backbone"]
    options = backbone_config.get("options") or {}
    method = facts.get("method") or {}
    method_name = method.get("preset") or method.get("name") or "unknown"
    data = facts.get("data") or {}
    # the weights training started from, as the run's config names them (a reloaded model's own
    # options no longer do: init_from is cleared when a segros folder is loaded)
    started = ((facts.get("config") or {}).get("model") or {}).get("init_from") or options.get("init_from")
    # "raw": the trained weights; "ema": their exponential moving average (segros export --weights ema)
    weights = facts.get("weights", "raw")
    shown = "trained (raw)"
    if weights == "ema":
        shown = f"EMA of the trained weights (decay {facts.get('ema_decay')})"
    segros_meta = {
        "backbone": backbone,
        "method": method_name,
        "settings": method,
        "plan": facts.get("plan", {}),
        "base_weights": started,
        "model_options": options,
        "training_data": data,
        "step": facts.get("step"),
        "weights": weights,
        "seed": facts.get("seed"),
        "version": facts["segros_version"],
        "evaluation": facts.get("evaluation", {}),
    }
    base = _hub_ids(started)
    card_data = ModelCardData(
        library_name="segros",
        tags=["segros", backbone, str(method_name), "text-to-image"],
        pipeline_tag="text-to-image",
        base_model=base[0] if base else None,
        datasets=_hub_ids(data.get("path")) or None,
        segros=json.loads(json.dumps(segros_meta, default=str)),
    )
    lines = [
        f"# {backbone} fine-tuned with segros ({method_name})",
        "",
        "Exported with `segros export --format hub`. Load it with "
        "`segros.backbones.registry.load_backbone(folder)`, or generate with "
        "`segros generate --checkpoint FOLDER ...`.",
        "",
        "| | |",
        "|---|---|",
        f"| backbone | `{backbone}` |",
        f"| method | `{method_name}` |",
        f"| base weights | `{started}` |",
        f"| training data | `{json.dumps(data)}` |",
        f"| steps | {facts.get('step')} |",
        f"| weights | {shown} |",
        f"| seed | {facts.get('seed')} |",
        f"| segros version | {facts['segros_version']} |",
        "",
        "## SeGroS settings",
        "",
        "```yaml",
        yaml.safe_dump(method, sort_keys=True).rstrip() if method else "# not recorded (no run config found)",
        "```",
        "",
        "Resolved (the preset's values filled in):",
        "",
        "```yaml",
        yaml.safe_dump(facts.get("plan") or {}, sort_keys=True).rstrip(),
        "```",
        "",
        "## Evaluation",
        "",
    ]
    evaluation = facts.get("evaluation")
    if evaluation:
        for where, summary in evaluation.items():
            lines += [f"- `{where}`: `{json.dumps(summary, default=str)}`"]
    else:
        lines += ["No evaluation summary was found in the run folder."]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    return ModelCard(content)
