"""OpenUni's published weights in upstream's layout, read into the classes segros builds.

Upstream (docs/upstream/openuni.md section 8) builds its model from three hub repos and one
``.pth``: the MLLM (``OpenGVLab/InternVL3-1B`` / ``-2B``, InternVL's *original* remote-code
format), SANA (``Efficient-Large-Model/Sana_*_512px_diffusers``: ``transformer/``,
``scheduler/``), the DC-AE (``mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers``) and
``openuni_*_{text2image23m,blip3o60k}.pth`` with the trained parts (queries, connector, projector;
fine-tuned files also the SANA DiT). segros runs the MLLM in transformers' HF InternVL classes,
so the original checkpoint is renamed on load (:func:`internvl_to_hf`, transformers' own
``convert_internvl_weights_to_hf`` rules: the ViT's fused ``attn.qkv`` split in three, the rest
renamed); an HF-format copy (``OpenGVLab/InternVL3-*-hf``) is read as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from segros.backbones.files import load_exact, plain_state
from segros.backbones.hub import MissingCheckpointError, resolve_files
from segros.backbones.openuni.model import RELEASES
from segros.backbones.openuni.text import TOKENIZER_OPTIONAL

# original InternVL key -> HF key (the first rule that matches renames it)
_VIT, _VIT_HF = r"^vision_model\.encoder\.layers\.(\d+)\.", r"model.vision_tower.encoder.layer.\1."
_EMB, _EMB_HF = r"^vision_model\.embeddings\.", "model.vision_tower.embeddings."
_INTERNVL_RENAMES: list[tuple[str, str]] = [
    (_EMB + r"class_embedding$", _EMB_HF + "cls_token"),
    (_EMB + r"position_embedding$", _EMB_HF + "position_embeddings"),
    (_EMB + r"patch_embedding\.", _EMB_HF + "patch_embeddings.projection."),
    (_VIT + r"ls1$", _VIT_HF + "lambda_1"),
    (_VIT + r"ls2$", _VIT_HF + "lambda_2"),
    (_VIT + r"attn\.proj\.", _VIT_HF + "attention.projection_layer."),
    (_VIT + r"attn\.(q_norm|k_norm)\.", _VIT_HF + r"attention.\2."),
    (_VIT + r"norm1\.", _VIT_HF + "layernorm_before."),
    (_VIT + r"norm2\.", _VIT_HF + "layernorm_after."),
    (_VIT + r"mlp\.", _VIT_HF + "mlp."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]
_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")


def is_original_internvl(keys: Any) -> bool:
    """Whether a state dict is in InternVL's original (remote-code) layout."""
    return any(k.startswith(("vision_model.", "mlp1.")) for k in keys)


def internvl_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-format InternVL state dict under transformers' ``InternVLForConditionalGeneration``
    names. The fused ``attn.qkv`` (3D, D) of each ViT layer becomes ``attention.{q,k,v}_proj``
    (rows 0..D-1, D..2D-1, 2D..3D-1: InternViT reshapes qkv to (3, heads, head_dim) in that order).
    A key no rule knows is an error naming it."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if m := _QKV.match(key):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"model.vision_tower.encoder.layer.{m[1]}.attention.{name}.{m[2]}"] = part.contiguous()
            continue
        for pattern, repl in _INTERNVL_RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} InternVL keys of no known layout, e.g. {unknown[:5]}")
    return out


_QWEN2_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings", "vocab_size",
    "tie_word_embeddings", "bos_token_id", "eos_token_id",
)  # fmt: skip


def hf_internvl_parts(original: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The HF vision and text configs (the arguments of
    :func:`segros.backbones.openuni.model.internvl_config`) of an original InternVL ``config.json``
    (``InternVLChatConfig``: ``vision_config`` of ``InternVisionConfig``, ``llm_config`` of
    ``Qwen2Config``). Only what OpenUni runs is supported: Qwen2 LLM, last ViT layer, pixel-shuffle
    v2."""
    vision, llm = original["vision_config"], dict(original["llm_config"])
    arch = (llm.get("architectures") or ["?"])[0]
    if arch != "Qwen2ForCausalLM":
        raise ValueError(f"OpenUni's MLLM has a Qwen2 LLM; this config names {arch}")
    if original.get("select_layer", -1) != -1 or original.get("ps_version", "v1") != "v2":
        raise ValueError(
            "OpenUni reads the last ViT layer with pixel-shuffle v2 (select_layer -1, ps_version v2)"
        )
    if original.get("downsample_ratio", 0.5) != 0.5:
        raise ValueError("OpenUni's InternVL3 pixel-shuffles by 0.5")
    hf_vision = {
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "hidden_act": vision.get("hidden_act", "gelu"),
        "norm_type": vision.get("norm_type", "rms_norm"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "image_size": original.get("force_image_size") or vision["image_size"],
        "patch_size": vision["patch_size"],
        "attention_bias": vision.get("qkv_bias", False),
        "use_qk_norm": vision.get("qk_normalization", True),
        "layer_scale_init_value": vision.get("initializer_factor", 0.1),
        "use_mean_pooling": True,
    }
    text = {"model_type": "qwen2", **{k: llm[k] for k in _QWEN2_KEYS if k in llm}}
    return hf_vision, text


def hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF-format InternVL state dict under transformers 5 names (older files say
    ``language_model.model.`` / ``vision_tower.`` / ``multi_modal_projector.`` at the top level)."""
    out = {}
    for k, v in state.items():
        if k.startswith(("vision_tower.", "multi_modal_projector.")):
            k = "model." + k
        elif k.startswith("language_model.model."):
            k = "model.language_model." + k.removeprefix("language_model.model.")
        elif k.startswith("language_model.lm_head."):
            k = k.removeprefix("language_model.")
        out[k] = v
    return out


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers ``config.json`` without its ``_class_name`` / ``_diffusers_version`` entries."""
    return {k: v for k, v in config.items() if not k.startswith("_")}



# --- the .pth: trained parts by upstream attribute name -------------------------------------------
def route_openuni(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Upstream ``OpenUniInternVL3SANAHF`` keys -> segros keys (``transformer.`` -> ``model.``,
    ``lmm.`` -> ``mllm.`` in HF names, ``vae.`` kept, ``meta_queries`` / ``connector.`` / ``projector.``
    kept), and the keys it could not place."""
    out: dict[str, torch.Tensor] = {}
    lmm: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key == "meta_queries" or key.startswith(("connector.", "projector.", "vae.")):
            out[key] = value
        elif key.startswith("transformer."):
            out["model." + key.removeprefix("transformer.")] = value
        elif key.startswith("lmm."):
            lmm[key.removeprefix("lmm.")] = value
        else:
            unknown.append(key)
    if lmm:
        hf = internvl_to_hf(lmm) if is_original_internvl(lmm) else lmm
        out |= {"mllm." + k: v for k, v in hf.items()}
    return out, unknown


def load_release(
    backbone: Any,
    files: dict[str, Any],
    sources: dict[str, str],
    mllm_state: dict[str, torch.Tensor],
    pth_state: dict[str, torch.Tensor],
) -> None:
    """Load an OpenUni release into ``backbone`` (built from its architecture): the MLLM
    (``mllm_state``, HF names), SANA and the DC-AE each key for key, then the ``.pth``
    (``pth_state``) routed to its parts, which must hold every trained part (queries, connector,
    projector). ``files`` / ``sources``: :func:`gather`'s files and the folders or hub ids they
    came from (named in the errors)."""
    load_exact(backbone.mllm, hf_names(mllm_state), f"{sources['mllm']} (InternVL3)")
    load_exact(backbone.model, read_safetensors(files["sana_files"]), f"{sources['sana']} (SANA)")
    load_exact(backbone.vae, read_safetensors(files["vae_files"]), f"{sources['vae']} (DC-AE)")
    routed, unknown = route_openuni(pth_state)
    if unknown:
        raise ValueError(f"{files['pth']}: {len(unknown)} keys of no OpenUni part, e.g. {unknown[:5]}")
    lacking = [p for p in sorted(TRAINED) if not any(k == p or k.startswith(p) for k in routed)]
    if lacking:
        raise ValueError(f"{files['pth']} lacks OpenUni's trained parts: {', '.join(lacking)}")
    result = backbone.load_state_dict(routed, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{files['pth']}: keys that fit no parameter, e.g. {result.unexpected_keys[:5]}")
    own = {k for k in routed if k.startswith(TRAINED)}
    need = {k for k in backbone.state_dict() if k.startswith(TRAINED)}
    if need - own:
        raise ValueError(f"{files['pth']} lacks {len(need - own)} weights, e.g. {sorted(need - own)[:5]}")


# --- files -----------------------------------------------------------------------------------------
def _safetensors(source: str, sub: str, stem: str, what: str, key: str, errors: list[str]) -> list[Path]:
    """The safetensors file(s) of one model: ``{sub}{stem}.safetensors`` or the shards its
    ``.safetensors.index.json`` lists."""
    try:
        found = resolve_files(source, [], what, key, optional=[f"{sub}{stem}.safetensors.index.json"])
        index = found.get(f"{sub}{stem}.safetensors.index.json")
        if index is None:
            return [
                resolve_files(source, [f"{sub}{stem}.safetensors"], what, key)[f"{sub}{stem}.safetensors"]
            ]
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = resolve_files(source, [sub + s for s in shards], what, key)
        return [files[sub + s] for s in shards]
    except MissingCheckpointError as e:
        errors.append(str(e))
        return []


def _json(source: str, name: str, what: str, key: str, errors: list[str]) -> dict[str, Any] | None:
    try:
        return json.loads(resolve_files(source, [name], what, key)[name].read_text())
    except MissingCheckpointError as e:
        errors.append(str(e))
        return None


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state |= load_file(str(f))
    return state


def locate(init_from: str, name: str) -> str:
    """Where a component lives: ``init_from/<repo name>`` when that folder exists (upstream's
    names, e.g. ``InternVL3-1B``), else the hub id ``name``."""
    local = Path(init_from).expanduser() / name.split("/")[-1]
    return str(local) if init_from and local.is_dir() else name


def checkpoint_file(init_from: str, file: str) -> str:
    """``file`` inside ``init_from``, or inside its ``checkpoints/`` (upstream README's download)."""
    folder = Path(init_from).expanduser()
    return f"checkpoints/{file}" if folder.is_dir() and (folder / "checkpoints" / file).is_file() else file


def gather(sources: dict[str, str], pth: str) -> dict[str, Any]:
    """Every file an OpenUni release needs, as loaded objects, or one error naming every missing
    file. ``sources``: ``init_from`` / ``mllm`` / ``sana`` / ``vae`` / ``tokenizer`` (folders or hub ids)."""
    errors: list[str] = []
    out: dict[str, Any] = {}
    try:
        out["pth"] = resolve_files(sources["init_from"], [pth], "OpenUni checkpoint", "model.init_from")[pth]
    except MissingCheckpointError as e:
        errors.append(str(e))
    out["mllm_config"] = _json(sources["mllm"], "config.json", "InternVL3 MLLM", "model.mllm", errors)
    out["mllm_files"] = _safetensors(sources["mllm"], "", "model", "InternVL3 MLLM", "model.mllm", errors)
    sana = sources["sana"]
    out["sana_config"] = _json(sana, "transformer/config.json", "SANA transformer", "model.sana", errors)
    out["sana_files"] = _safetensors(sana, "transformer/", "diffusion_pytorch_model", "SANA transformer",
                                     "model.sana", errors)  # fmt: skip
    out["scheduler"] = _json(sana, "scheduler/scheduler_config.json", "SANA scheduler", "model.sana", errors)
    out["vae_config"] = _json(sources["vae"], "config.json", "DC-AE autoencoder", "model.vae", errors)
    out["vae_files"] = _safetensors(sources["vae"], "", "diffusion_pytorch_model", "DC-AE autoencoder",
                                    "model.vae", errors)  # fmt: skip
    try:
        found = resolve_files(sources["tokenizer"], ["tokenizer_config.json"], "InternVL3 tokenizer",
                              "model.tokenizer", optional=TOKENIZER_OPTIONAL)  # fmt: skip
        out["tokenizer"] = found["tokenizer_config.json"].parent
    except MissingCheckpointError as e:
        errors.append(str(e))
    if errors:
        raise MissingCheckpointError("\n".join(errors))
    return out




# --- the inverse: the trained parts as upstream's .pth ---------------------------------------------
TRAINED = ("meta_queries", "connector.", "projector.")


def upstream_pth_state(state: dict[str, torch.Tensor], with_transformer: bool) -> dict[str, torch.Tensor]:
    """The inverse of :func:`route_openuni` for what upstream's ``.pth`` holds: the trained parts
    under ``OpenUniInternVL3SANAHF``'s attribute names (``meta_queries``, ``connector.*``,
    ``projector.*``) and, for a fine-tune that trained SANA (``with_transformer``), ``model.*`` back
    as ``transformer.*``. The frozen MLLM and VAE are left out, as DeepSpeed's
    ``exclude_frozen_parameters`` leaves them out of upstream's files."""
    out = {k: v for k, v in state.items() if k == "meta_queries" or k.startswith(TRAINED[1:])}
    if with_transformer:
        sana = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        out |= {"transformer." + k: v for k, v in sana.items()}
    return out


def pth_name(size: str, stage: str) -> str:
    """The release's ``.pth`` name of a size and stage (tiny models: ``openuni_tiny_<stage>.pth``)."""
    release = RELEASES.get(size)
    return release["checkpoint"].format(stage=stage) if release else f"openuni_{size}_{stage}.pth"


def write_upstream(backbone: Any, out: Path) -> dict[str, Any]:
    """Write ``out/<release .pth name>``; returns the components upstream loads from their own
    repos (InternVL3, SANA, DC-AE), by the folder or hub id the model came from: referenced, not
    copied. SANA is exported only if it was trained (``train_transformer``); otherwise upstream's
    original SANA is what the file goes with."""
    out.mkdir(parents=True, exist_ok=True)
    options = backbone.options
    stage = "blip3o60k" if options.train_transformer else "text2image23m"
    name = pth_name(options.size, stage)
    state = upstream_pth_state(backbone.state_dict(), options.train_transformer)
    torch.save(plain_state(state), out / name)
    release = RELEASES.get(options.size, {})
    refs = {
        "lmm (InternVL3)": options.mllm or release.get("mllm", "?"),
        "transformer (SANA)": "in the .pth (trained)" if options.train_transformer
        else options.sana or release.get("sana", "?"),
        "vae (DC-AE)": options.vae or release.get("vae", "?"),
        "tokenizer": options.tokenizer or options.mllm or release.get("mllm", "?"),
    }
    return {"files": [name], "references": refs}
