"""The training config: YAML in, validated before anything runs, with key-path error messages.

Sections: ``model`` (validated by the chosen backbone's own schema), ``method`` (a preset and
any SeGroS knob; its keys are generated from :class:`~segros.plan.PlanConfig` and
:class:`~segros.grounding.GroundingConfig`, which validate them), ``data``, ``optim``, ``lora``
(low-rank adapters through peft; off by default), ``run``, ``logging``. Command-line overrides
``key.path=value`` go through the same validation, so ``method.hint_ratio=2`` fails exactly like
the same typo in the file would. A file may start from others (``base: ../segros-256.yaml``) and
state only what differs (segros.train.config_files: deep merge, chains, cycles refused); the
merged config is validated as one, and an error in a value a base set names that base.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from segros._checks import SettingError, SettingTypeError, check_choice, check_ratio
from segros.grounding import GroundingConfig
from segros.plan import DROP_LOSS_RATIO, PRESETS, PlanConfig, preset
from segros.schedules import SCHEDULES
from segros.shipped import CONFIGS
from segros.train.config_files import ConfigFileError, Origins, forget, resolve


class ConfigError(ValueError):
    """A config that cannot run; the message names every offending key path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- method: built from the core's own dataclasses ----------------------------------------------
# Every SeGroS knob is a field of PlanConfig (plan.py) or GroundingConfig (grounding.py), which
# also validate them (ranges, choices); the config's method: section is generated from those
# fields, so the two cannot drift apart, and each value is validated once, by the core. A knob's
# key default is the value every preset shares, or None ("the preset's value") where presets
# differ.
_PLAN_ONLY = ("grounding", "loss_target_ratio")  # nested, and drop-loss's two keys below


def _knob_fields() -> dict[str, tuple[Any, Any]]:
    fields: dict[str, tuple[Any, Any]] = {}
    for cls, of_preset in ((PlanConfig, lambda p: p), (GroundingConfig, lambda p: p.grounding)):
        types = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in _PLAN_ONLY:
                continue
            values = {getattr(of_preset(p), f.name) for p in PRESETS.values()}
            shared = values.pop() if len(values) == 1 else None
            fields[f.name] = (types[f.name] | None if shared is None else types[f.name], shared)
    return fields


class _MethodSection(Section):
    """Checks a ``method:`` section by building its :class:`PlanConfig` once (kept for the run)."""

    _plan: PlanConfig | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _build_plan(self) -> _MethodSection:
        try:
            self._plan = self._make_plan()
            if self.mask_schedule is not None:
                check_choice("mask_schedule", self.mask_schedule, SCHEDULES)
        except (SettingError, SettingTypeError) as e:  # the core names the knob: the key path
            raise PydanticCustomError(
                "setting", "{message}", {"setting": e.setting, "message": str(e)}
            ) from None
        return self

    def _make_plan(self) -> PlanConfig:
        base = preset(self.preset)
        targets = self.loss_targets or ("all" if base.loss_target_ratio is None else "top")
        check_choice("loss_targets", targets, LOSS_TARGETS)
        if targets == "all":  # unused, but a bad value is still an error (PlanConfig checks it else)
            check_ratio("loss_target_ratio", self.loss_target_ratio)
        given = {k: getattr(self, k) for k in _KNOBS if getattr(self, k) is not None}
        plan = {k: v for k, v in given.items() if k in _PLAN_KNOBS}
        grounding = dataclasses.replace(
            base.grounding, **{k: v for k, v in given.items() if k not in _PLAN_KNOBS}
        )
        loss_target_ratio = self.loss_target_ratio if targets == "top" else None
        return base.replace(**plan, loss_target_ratio=loss_target_ratio, grounding=grounding)

    def plan_config(self) -> PlanConfig:
        """The :class:`PlanConfig` this section describes."""
        return self._plan


_KNOB_FIELDS = _knob_fields()
_KNOBS = tuple(_KNOB_FIELDS)
_PLAN_KNOBS = {f.name for f in dataclasses.fields(PlanConfig)}
LOSS_TARGETS = ("all", "top")  # "top": drop-loss, the loss_target_ratio most grounded targets

MethodConfig = create_model(
    "MethodConfig",
    __base__=_MethodSection,
    __doc__="Which supervision to train with: a preset (plan.PRESETS), any knob overridden.",
    preset=(str, "segros"),
    **_KNOB_FIELDS,
    # drop-loss (Table 6): loss_targets None = the preset's (top for segros_droploss, else all)
    loss_targets=(str | None, None),
    loss_target_ratio=(float, DROP_LOSS_RATIO),
    # objective: lambda of Eq. 13, and the masking schedule (None: the backbone's own)
    i2t_weight=(float, Field(1.0, ge=0.0)),
    mask_schedule=(str | None, None),
    mask_per_batch=(bool | None, None),
)


class WebNoiseConfig(Section):
    """``data.shapes.web_noise``: the rates of the ``web`` caption style (segros.data.shapes.WebNoise,
    which documents each; defaults equal its own)."""

    detailed: float = Field(0.35, ge=0.0, le=1.0)
    omit: float = Field(0.25, ge=0.0, le=1.0)
    color: float = Field(0.5, ge=0.0, le=1.0)
    relation: float = Field(0.3, ge=0.0, le=1.0)
    wrong: float = Field(0.1, ge=0.0, le=1.0)
    paraphrase: float = Field(0.5, ge=0.0, le=1.0)
    aligned: float = Field(0.0, ge=0.0, le=1.0)


CaptionStyle = Literal["mixed", "geneval", "dense", "coarse", "web"]


class ShapesConfig(Section):
    """``data.shapes``: how the ShapesWorld streams are drawn. Present only when a stream is
    ShapesWorld (``data.source`` or ``data.i2t`` is ``shapes``), so a Parquet run has none."""

    seed: int = 0
    scenes: int = Field(1_000_000, ge=1)  # distinct scenes the stream draws from
    # object placement (grid: snapped to the tiny tokenizer's patches, cells per side = the model's
    # token grid) and caption distribution (coarse for pretraining, mixed / dense for fine-tuning;
    # docs/miniature.md)
    layout: Literal["free", "grid"] = "free"
    caption_style: CaptionStyle = "mixed"
    # coarse captions only: the chance a named object comes with its colour (the shipped TinyUMM was
    # pretrained at 0.5; 0 leaves colour to the fine-tuning captions, docs/miniature.md)
    coarse_color_rate: float = Field(0.5, ge=0.0, le=1.0)
    # coarse captions only: the chance a position scene's caption states its relation (the shipped
    # TinyUMM: 0.1, so 1.7 % of pretraining captions; docs/miniature.md)
    coarse_relation_rate: float = Field(0.1, ge=0.0, le=1.0)
    # relative weights of the scene kinds single_object, two_object, counting, position, scene (None:
    # equal, as the shipped TinyUMM was pretrained; [1, 1, 1, 5, 1]: five scenes in nine are position)
    kind_weights: tuple[float, float, float, float, float] | None = None
    # web captions only: loose, sometimes wrong alt-text for pretraining (docs/miniature.md)
    web_noise: WebNoiseConfig = Field(default_factory=WebNoiseConfig)
    # caption style of the image-to-text task (None: caption_style). Real UMMs learn understanding
    # from dense captions while their generation sees coarse web text
    i2t_caption_style: CaptionStyle | None = None

    @model_validator(mode="after")
    def _check(self) -> ShapesConfig:
        from segros.data.shapes import VALIDATION_SEEDS, kind_probabilities
        from segros.data.sources import I2T_SEED_OFFSET

        if self.kind_weights is not None:
            kind_probabilities(self.kind_weights)  # non-negative, not all zero
        if {self.seed, self.seed + I2T_SEED_OFFSET} & set(VALIDATION_SEEDS):
            raise ValueError(
                f"data.shapes.seed {self.seed} would draw (for its text-to-image or image-to-text "
                f"stream, seed + {I2T_SEED_OFFSET}) from the validation seeds {VALIDATION_SEEDS} "
                "that segros validate keeps unseen: pick another seed"
            )
        return self


class FilesConfig(Section):
    """``data.files``: where and how the image-caption files are read. Present only when
    ``data.source`` is ``files``, so a ShapesWorld run has none."""

    # a folder with .txt captions, a JSON(L) manifest, Parquet file(s), WebDataset tar shard(s) or a
    # Hugging Face dataset (folder or hub id), recognised from what the path holds (segros.data.formats,
    # docs/data.md): a path, a glob, brace ranges (shard-{000..099}.tar), patterns joined by ::, or a
    # list of them
    path: str | list[str]
    # the columns (fields) to read; when a table lacks the named one, the first of the names the
    # paper's datasets use is taken (segros.data.hf.IMAGE_COLUMNS / CAPTION_COLUMNS, docs/data.md)
    image_column: str = "image"
    caption_column: str = "caption"
    split: str = "train"  # of a Hugging Face dataset with several
    hf_cache_dir: str | None = None  # where datasets keeps its Arrow copies (None: its default cache)
    # read the path as a stream (datasets' IterableDataset; segros.data.streaming): for shards too
    # large to hold, compressed tars and URLs. Resume stays exact (docs/data.md)
    streaming: bool = False
    shuffle_buffer: int = Field(1000, ge=0)  # streaming with shuffle: examples shuffled in memory


# data keys of before the source's options moved under data.shapes / data.files (issue 29): still
# read, with a warning naming the new key. {old key: (section, new key)}
OLD_DATA_KEYS = {f"shapes_{name}": ("shapes", name) for name in ShapesConfig.model_fields}
OLD_DATA_KEYS |= {name: ("files", name) for name in FilesConfig.model_fields}
_SECTIONS: dict[str, type[Section]] = {"shapes": ShapesConfig, "files": FilesConfig}


def _is_default(section: str, name: str, value: Any) -> bool:
    """Whether an old key holds its field's default (as every resolved config saved before did,
    for the source it did not read): leaving it out changes nothing."""
    field = _SECTIONS[section].model_fields[name]
    if field.is_required():  # data.path: None in a config that read no files
        return value is None
    default = field.get_default(call_default_factory=True)
    default = default.model_dump() if isinstance(default, BaseModel) else default
    return value == default


class OldKeyWarning(FutureWarning):
    """A config key that still reads under an old name; the message names the current one."""


def _merge(old: Any, new: Any) -> Any:
    """``new`` over ``old`` (mappings merged key by key): the current key wins over an old one."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merge(old.get(k), v) for k, v in new.items()}}
    return new


def _moved_data_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A raw ``data:`` section with every old key moved under its section (``shapes`` / ``files``);
    one holding its default is dropped, so that a resolved config saved before still reads."""
    old = [k for k in data if k in OLD_DATA_KEYS]
    if not old:
        return data
    out = {k: v for k, v in data.items() if k not in OLD_DATA_KEYS}
    renames = ", ".join(f"data.{k} is now data.{'.'.join(OLD_DATA_KEYS[k])}" for k in old)
    warnings.warn(f"old config keys still read, rename them: {renames}", OldKeyWarning, stacklevel=2)
    moved: dict[str, dict[str, Any]] = {}
    for k in old:
        section, name = OLD_DATA_KEYS[k]
        if not _is_default(section, name, data[k]):
            moved.setdefault(section, {})[name] = data[k]
    for section, values in moved.items():
        current = out.get(section)
        if current is None or isinstance(current, dict):  # else: the bad value's own error stands
            out[section] = _merge(values, current or {})
    return out


class DataConfig(Section):
    # shapes: ShapesWorld streamed (its options: data.shapes); files: image-caption files (where and
    # how to read them: data.files)
    source: Literal["shapes", "files"] = "shapes"
    # the files' options, required for data.source=files; None otherwise, and left out of the
    # resolved config
    files: FilesConfig | None = None
    # ShapesWorld's options, when data.source or data.i2t is shapes (filled with the defaults then);
    # None otherwise, and left out of the resolved config
    shapes: ShapesConfig | None = None
    i2t: Literal["shapes", "llava", "none"] = "shapes"
    i2t_path: str | None = None  # LLaVA JSON
    i2t_image_root: str | None = None
    batch_size: int = Field(16, ge=1)
    i2t_batch_size: int | None = Field(None, ge=1)  # None: same as batch_size
    max_bad_share: float = Field(0.01, ge=0.0, le=1.0)
    shuffle: bool = True
    # DataLoader worker processes per stream that read, decode and collate batches ahead of the step
    # (segros.data.loader); None: 2 when the process has more than 2 CPU cores, else 0 (the main
    # process reads; docs/data-loading.md has the measurements behind this default)
    workers: int | None = Field(None, ge=0, le=64)
    prefetch: int = Field(2, ge=1, le=64)  # chunks (of batch_size records) each worker reads ahead
    # a folder `segros cache` wrote for this backbone and this data (segros.data.cache): the
    # image-caption records come pre-encoded from it; None: encode the images every step
    cache: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _source_sections(cls, data: Any) -> Any:
        """Old keys moved under ``shapes`` / ``files``; ``shapes`` filled in when a stream is
        ShapesWorld; either section refused when nothing would read it."""
        if not isinstance(data, dict):
            return data
        data = _moved_data_keys(data)
        source = data.get("source", "shapes")
        used = source == "shapes" or data.get("i2t", "shapes") == "shapes"
        if used and data.get("shapes") is None:
            data = {**data, "shapes": {}}
        elif not used and data.get("shapes") is not None:
            raise ValueError(
                "data.shapes is set but neither data.source nor data.i2t is 'shapes', so nothing "
                "would read it: drop data.shapes"
            )
        files = data.get("files")
        if source == "files" and files is None:
            raise ValueError("data.files.path is required for data.source='files'")
        if source == "shapes" and files is not None:
            given = files.items() if isinstance(files, dict) else ()
            named = ", ".join(f"data.files.{k}" + f" ({v})" * (k == "path") for k, v in given) or "data.files"
            raise ValueError(
                f"{named} is set but data.source is 'shapes', which ignores it: "
                "set data.source=files to read the files, or drop data.files"
            )
        return data

    @model_validator(mode="after")
    def _paths(self) -> DataConfig:
        if self.files is not None and not self.files.path:
            raise ValueError("data.files.path is required for data.source='files'")
        if self.streaming and self.cache:
            raise ValueError(
                "data.files.streaming reads data.files.path as a stream: it needs no data.cache"
            )
        if self.i2t == "llava" and not (self.i2t_path and self.i2t_image_root):
            raise ValueError("data.i2t_path and data.i2t_image_root are required for data.i2t='llava'")
        return self

    @property
    def streaming(self) -> bool:
        """Whether the image-caption files are read as a stream (``data.files.streaming``)."""
        return self.files is not None and self.files.streaming

    @model_serializer(mode="wrap")
    def _without_unused_sections(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        for section in ("files", "shapes"):  # a source's keys only in a run that reads it
            if out.get(section, ...) is None:
                del out[section]
        return out


class OptimConfig(Section):
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    schedule_steps: int | None = Field(None, ge=1)  # length of the lr schedule; None: run.max_steps
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine decays to lr * this
    grad_clip: float | None = Field(1.0, gt=0.0)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    freeze: list[str] = []  # fnmatch patterns over parameter names
    # parameters trained without weight decay: fnmatch patterns, and optionally every 1-D
    # parameter (biases, norm scales), as MAE/MAR/Harmon's optimiser does
    no_decay: list[str] = []
    no_decay_1d: bool = False
    # an exponential moving average of the trainable weights, saved as ema.safetensors in every
    # checkpoint (segros.train.ema; None: off). ema_device: where it is kept (cpu saves accelerator
    # memory); ema_every: update it every N optimizer steps (each update still uses ema_decay)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    ema_device: Literal["same", "cpu"] = "same"
    ema_every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ema(self) -> OptimConfig:
        if self.ema_decay is None and (self.ema_device != "same" or self.ema_every != 1):
            raise ValueError("optim.ema_device and optim.ema_every have no effect without optim.ema_decay")
        return self


class LoraConfig(Section):
    """LoRA adapters through peft (segros.backbones.lora); ``rank: 0`` or ``lora: null`` is off."""

    rank: int = Field(0, ge=0)  # 0: off (full fine-tuning)
    alpha: float | None = Field(None, gt=0.0)  # None: alpha = rank (scale 1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # peft target_modules: module names or name suffixes (``qkv``, ``self_attn.q_proj``);
    # None: the backbone's default (Backbone.lora_targets)
    targets: list[str] | None = Field(None, min_length=1)
    # fnmatch patterns over parameter names (as optim.freeze, without peft's prefixes) that
    # stay fully trainable; never the input embedding table the grounding reads
    trainable: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class RunConfig(Section):
    seed: int = 0
    max_steps: int = Field(200, ge=1)
    save_every: int = Field(100, ge=1)
    keep_last: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    picture_every: int = Field(100, ge=0)  # 0: no pictures
    max_bad_steps: int = Field(5, ge=1)  # NaN/inf losses in a row before the run stops
    progress: bool | Literal["auto"] = "auto"  # auto: on a terminal, off in CI
    # torch.compile each trainable transformer block (Backbone.transformer_blocks) in place: same
    # weights and checkpoint keys, faster steps after a one-off compile (needs a C++ compiler on CPU)
    compile: bool = False


class LoggingConfig(Section):
    tensorboard: bool = True
    wandb_project: str | None = None
    wandb_entity: str | None = None


class TrainConfig(Section):
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "tiny"})
    method: MethodConfig = MethodConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    lora: LoraConfig | None = LoraConfig()
    run: RunConfig = RunConfig()
    logging: LoggingConfig = LoggingConfig()

    def model_options(self) -> BaseModel:
        """The ``model`` section validated by its backbone's schema."""
        from segros.backbones.registry import options_schema

        return options_schema(self.model.get("name", "tiny"))(**self.model)

    @model_validator(mode="after")
    def _ema_without_lora(self) -> TrainConfig:
        if self.optim.ema_decay is not None and self.lora is not None and self.lora.enabled:
            raise ValueError(
                "optim.ema_decay with LoRA is not supported: the EMA averages the full trainable "
                "weights; train without lora.rank, or without optim.ema_decay"
            )
        return self


def _where(keys: tuple[str, ...], origins: Origins | None) -> str:
    """`` (in base.yaml)`` when a base file (not the file given, not an override) set ``keys``."""
    if not origins:
        return ""
    for n in range(len(keys), 0, -1):  # the value itself, or the list / mapping it sits in
        if keys[:n] in origins:
            return f" (in {origins[keys[:n]]})"
    below = sorted({str(f) for k, f in origins.items() if k[: len(keys)] == keys})
    return f" (keys from {', '.join(below)})" if below else ""


def _format(error: ValidationError, prefix: str = "", origins: Origins | None = None) -> str:
    lines = []
    for e in error.errors():
        setting = (e.get("ctx") or {}).get("setting")  # a method knob the core refused
        loc = [str(p) for p in e["loc"]] + ([setting] if setting else [])
        keys = [prefix] * bool(prefix) + loc
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        where = _where(tuple(keys), origins)
        lines.append(f"  {'.'.join(keys) or '<root>'}: {e['msg']}{got}{where}")
    return "invalid config:\n" + "\n".join(lines)


def validate(raw: dict[str, Any], origins: Origins | None = None) -> TrainConfig:
    """Validate a raw config dict (all sections, including the backbone's). ``origins``: the
    base file each key came from (segros.train.config_files), named in the error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    try:
        cfg = TrainConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_format(e, origins=origins)) from None
    try:
        cfg.model = cfg.model_options().model_dump()
    except ValidationError as e:
        raise ConfigError(_format(e, "model", origins)) from None
    except ValueError as e:  # unknown backbone name
        raise ConfigError(f"invalid config:\n  model.name: {e}") from None
    from segros.backbones.registry import backbone_class
    from segros.train.capabilities import refused_knobs

    # method knobs this backbone would silently ignore (e.g. masking knobs on a non-masking model)
    name = cfg.model["name"]
    refused = refused_knobs(cfg.method, backbone_class(name).capabilities, name)
    if refused:
        raise ConfigError("invalid config:\n" + "\n".join(f"  method.{k}: {v}" for k, v in refused.items()))
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a copy of ``raw``."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return out


def find_config(path: str | Path) -> Path:
    """``path``; or, for a relative ``configs/...`` path that does not exist here, the package's own
    copy (segros/configs, :data:`segros.shipped.CONFIGS`), so the README's commands run from a
    clone and from an installed package alike, and a file of that name here wins."""
    path = Path(path)
    if path.exists() or path.is_absolute() or path.parts[:1] != ("configs",):
        return path
    shipped = CONFIGS.joinpath(*path.parts[1:])
    return shipped if shipped.is_file() else path


def read_config(path: str | Path) -> tuple[dict[str, Any], Origins]:
    """A config file merged with its ``base:`` chain (unvalidated), and the base file each key
    came from (keys the file itself sets are not listed: errors there need no file name)."""
    own = find_config(path)
    try:
        raw, origins = resolve(own)
    except ConfigFileError as e:
        shipped = " (nor among the shipped configs)" if Path(path).parts[:1] == ("configs",) else ""
        raise ConfigError(f"{e}{shipped}") from None
    return raw, {k: f for k, f in origins.items() if f != own}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file and its ``base:`` files (or start from defaults), apply overrides, validate."""
    raw, origins = read_config(path) if path is not None else ({}, {})
    for item in overrides or []:  # an overridden key no longer comes from a base
        forget(origins, tuple(item.partition("=")[0].strip().split(".")))
    return validate(apply_overrides(raw, overrides or []), origins)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
