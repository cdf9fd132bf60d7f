"""The backbone contract (``segros/backbones/base.py``), run on every registered backbone.

Each backbone is a tiny randomly initialised model of its real classes (no download). What is
checked here holds for any adapter: typed batches, grounding inputs, a plan for every preset
with its hint / seen / target invariants, loss and backward, hint dropout and text conditioning,
caption dropout to the empty prompt, seeded generation, the save / load round trip and which
options a reload takes from the config. Per-backbone test files keep only what is specific to
one backbone. A new backbone in ``segros.backbones.registry.BACKBONES`` is picked up here once
``train_helpers.tiny_model_section`` knows a tiny ``model:`` section for it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math

import pytest
import torch
from train_helpers import tiny_model_section

from segros.backbones.base import BackboneOptions, Capabilities, I2TBatch, T2IBatch
from segros.backbones.files import saved_config
from segros.backbones.registry import BACKBONES, backbone_class, build_backbone, load_backbone
from segros.data.sources import ShapesConversations, ShapesImageText
from segros.plan import PRESETS, SupervisionPlan
from segros.schedules import SCHEDULES
from segros.supervision import ground_and_plan, sample_ratio

NAMES = sorted(BACKBONES)
B = 4


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def section(name, request, small_tokenizer):
    return tiny_model_section(name, request, small_tokenizer)


@pytest.fixture(scope="module")
def backbone(name, section):
    torch.manual_seed(0)
    bb = build_backbone(backbone_class(name).Options(**section)).eval()
    # output layers that start at zero (Harmon's DiffLoss head, as upstream) get random values,
    # so every input can reach the loss and the invariants below can fail
    with torch.no_grad():
        for p in bb.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0.0, 0.2)
        if name == "tiny":  # std-0.02 embeddings make hints nearly invisible; trained ones are not
            bb.model.embed.weight.normal_(0.0, 0.5)
            bb.model.position.weight.normal_(0.0, 0.5)
    return bb


@pytest.fixture(scope="module")
def batch(backbone) -> T2IBatch:
    source = ShapesImageText(backbone.image_size, 0, 100)
    return backbone.prepare_t2i([source[i] for i in range(B)])


@pytest.fixture(scope="module")
def i2t(backbone) -> I2TBatch:
    source = ShapesConversations(backbone.image_size, 0, 100)
    return backbone.prepare_i2t([source[i] for i in range(2)])


def make_plan(bb, batch: T2IBatch, preset: str = "segros", seed: int = 0, **knobs) -> SupervisionPlan:
    generator = torch.Generator().manual_seed(seed)
    ratio = sample_ratio(bb, len(batch), generator)
    return ground_and_plan(bb, batch, preset_config(preset, **knobs), ratio, generator)


def preset_config(preset: str, **knobs):
    from segros.plan import preset as make

    return make(preset, **knobs)


def recon(bb, batch: T2IBatch, plan: SupervisionPlan) -> torch.Tensor:
    torch.manual_seed(7)  # the same diffusion timesteps and noise for every call (Harmon)
    with torch.no_grad():
        return bb.reconstruction_loss(batch, plan)


# --- the class ---------------------------------------------------------------------------------


def test_the_class_declares_the_contract(name):
    cls = backbone_class(name)
    assert cls.name == name and not inspect.isabstract(cls)
    assert issubclass(cls.Options, BackboneOptions) and cls.Options.model_config["extra"] == "forbid"
    fields = set(cls.Options.model_fields)
    assert {"name", "init_from", "caption_dropout", "image_size"} <= fields
    assert cls.Options.model_fields["name"].default == name
    assert cls.reload_options <= fields and not cls.reload_options & {"name", "init_from", "image_size"}
    assert cls.mask_schedule in SCHEDULES and cls.lora_targets
    assert cls.prompt_padding in ("left", "right") and "model.safetensors" in cls.saved_files
    # FSDP2 (fully_shard) swaps an instance's class for a subclass of (FSDPModule, cls): the
    # contract's mixins must leave nn.Module's instance layout as it is
    from torch import nn
    from torch.distributed.fsdp import FSDPModule

    instance = cls.__new__(cls)
    nn.Module.__init__(instance)
    instance.__class__ = type(f"FSDP{cls.__name__}", (FSDPModule, cls), {})


def test_the_shipped_model_saves_current_option_names_and_an_old_name_is_a_clear_error(tmp_path):
    """The shipped TinyUMM's config.json uses today's option names (no rename shim reads old ones);
    a folder saved with a retired name is refused, naming its file and the unknown option."""
    import json
    import shutil

    from segros.shipped import PRETRAINED_TINY

    shipped = PRETRAINED_TINY
    options = json.loads((shipped / "config.json").read_text())["options"]
    tiny = backbone_class("tiny")
    assert set(options) <= set(tiny.Options.model_fields)
    loaded = tiny.from_pretrained(shipped).options  # the shipped model loads, with its own values
    assert (loaded.temperature, loaded.generation_temperature, loaded.size) == (0.7, 0.0, "small")
    old = tmp_path / "old"
    shutil.copytree(shipped, old)
    config = json.loads((old / "config.json").read_text())
    config["options"]["sample_temperature"] = config["options"].pop("temperature")
    (old / "config.json").write_text(json.dumps(config))
    unknown = r"config\.json has options the tiny backbone does not know: sample_temperature"
    with pytest.raises(ValueError, match=unknown):
        tiny.from_pretrained(old)


# --- data and grounding ------------------------------------------------------------------------


def test_prepare_gives_typed_batches(backbone, batch, i2t):
    L = batch.text_ids.shape[1]
    size = backbone.image_size
    assert isinstance(batch, T2IBatch) and len(batch) == B and len(batch.captions) == B
    assert batch.text_ids.dtype == torch.long and batch.text_ids.shape == (B, L)
    assert batch.text_mask.dtype == batch.caption_mask.dtype == torch.bool
    assert not (batch.caption_mask & ~batch.text_mask).any() and batch.caption_mask.any(1).all()
    assert batch.images.shape == (B, size, size, 3) and batch.images.dtype == torch.uint8
    if batch.caption_stopword is not None:
        assert not (batch.caption_stopword & ~batch.caption_mask).any()
    assert batch.drop_caption is None and batch.memo == {}
    moved = batch.to("cpu")
    assert moved is not batch and torch.equal(moved.text_ids, batch.text_ids)
    assert isinstance(i2t, I2TBatch) and len(i2t) == 2
    assert not (i2t.answer_mask & ~i2t.text_mask).any() and i2t.answer_mask.any(1).all()


def test_grounding_inputs_come_from_before_the_transformer(backbone, batch):
    with torch.no_grad():
        g = backbone(batch, mode="ground")
        again = backbone(batch.replace(), mode="ground")
    L, N = batch.text_ids.shape[1], backbone.num_tokens
    D = g.text_emb.shape[-1]
    assert g.text_emb.shape == (B, L, D) and g.image_emb.shape == (B, N, D)
    assert torch.equal(g.text_valid, batch.caption_mask)
    assert torch.isfinite(g.text_emb).all() and torch.isfinite(g.image_emb).all()
    assert torch.equal(g.image_emb, again.image_emb) and torch.equal(g.text_emb, again.text_emb)


def test_grounding_stopwords_and_hints_agree_with_the_batch(backbone, batch):
    """The grounding's stopwords are the batch's caption stopwords (on caption tokens only), and hints
    on the generation grid are the grounding's image-token embeddings at the hint positions."""
    with torch.no_grad():
        g = backbone(batch, mode="ground")
        idx = torch.tensor([[0, 3, 1], [2, 2, 0], [1, 0, 3], [3, 1, 2]])[:B]
        hints = backbone.hint_embeddings(batch, idx)
    if batch.caption_stopword is not None:
        assert torch.equal(g.text_stopword, batch.caption_stopword & batch.caption_mask)
    if backbone.hint_grid is None:
        want = torch.stack([g.image_emb[b, idx[b]] for b in range(B)])
        assert hints.shape == want.shape and torch.equal(hints, want)


def test_cached_records_give_the_batch_without_images(backbone):
    source = ShapesImageText(backbone.image_size, 0, 10)
    records = [source[i] for i in range(2)]
    fields = backbone.encode_images([r.image for r in records])
    stored = backbone.cache_fields([r.image for r in records])
    assert fields["images"].dtype == torch.uint8 and "images" not in stored and stored
    cached = [dataclasses.make_dataclass("R", ["caption", "cached"])(r.caption, {}) for r in records]
    for i, r in enumerate(cached):
        r.cached.update({k: v[i] for k, v in stored.items()})
    from_cache = backbone.prepare_t2i(cached)
    assert from_cache.images is None and set(from_cache.extras) == set(stored)


def _equal_batches(a, b) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert x.keys() == y.keys(), f.name
            for k in x:
                assert torch.equal(x[k], y[k]), f"{f.name}.{k}"
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        else:
            assert x == y, f.name


def _mixed_records(backbone, n: int):
    """ShapesWorld records with captions of very different lengths (so text padding differs)."""
    source = ShapesImageText(backbone.image_size, 0, 100)
    words = ["a", "red circle", "a photo of two small blue stars left of a large green square"]
    records = [source[i] for i in range(n)]
    return [dataclasses.replace(r, caption=words[i % 3]) for i, r in enumerate(records)]


def test_collate_is_the_cpu_part_and_encode_the_device_part(backbone):
    """prepare = encode(collate): the collated batch is CPU tensors without the frozen encoders'
    output (no codes), picklable (loader workers send it), and encoding it gives prepare's batch."""
    import pickle

    records = _mixed_records(backbone, 3)
    collated = backbone.collate_t2i(records)
    assert collated.images is not None and collated.images.dtype == torch.uint8
    assert all(t.device.type == "cpu" for t in collated.extras.values()) and collated.memo == {}
    _equal_batches(pickle.loads(pickle.dumps(collated)), collated)
    encoded = backbone.encode_t2i(collated)
    _equal_batches(encoded, backbone.prepare_t2i(records))
    conversations = ShapesConversations(backbone.image_size, 0, 100)
    i2t_records = [conversations[i] for i in range(3)]
    i2t = backbone.collate_i2t(i2t_records)
    _equal_batches(pickle.loads(pickle.dumps(i2t)), i2t)
    _equal_batches(backbone.encode_i2t(i2t), backbone.prepare_i2t(i2t_records))
    if "codes" in encoded.extras:  # an encoder ran in encode_t2i, not in the collate
        assert "codes" not in collated.extras and "codes" not in backbone.collate_i2t(i2t_records).extras


def test_rows_of_collated_chunks_concatenate_to_the_batch_of_those_records(backbone):
    """T2IBatch.cat / I2TBatch.cat: rows picked from batches collated apart are the batch the
    collate function makes of those records together (text re-padded to the longest row)."""
    records = _mixed_records(backbone, 6)
    first, second = backbone.collate_t2i(records[:3]), backbone.collate_t2i(records[3:])
    picked = [(first, slice(1, 3)), (second, slice(0, 1)), (second, slice(2, 3))]
    want = backbone.collate_t2i([records[1], records[2], records[3], records[5]])
    _equal_batches(T2IBatch.cat(picked, backbone.pad_id), want)
    _equal_batches(T2IBatch.cat([(first, slice(1, 2))], backbone.pad_id), backbone.collate_t2i(records[1:2]))
    conversations = ShapesConversations(backbone.image_size, 0, 100)
    i2t_records = [conversations[i] for i in range(5)]
    a, b = backbone.collate_i2t(i2t_records[:2]), backbone.collate_i2t(i2t_records[2:])
    got = I2TBatch.cat([(a, slice(1, 2)), (b, slice(0, 3))], backbone.pad_id)
    _equal_batches(got, backbone.collate_i2t(i2t_records[1:]))


# --- plans, losses, gradients ------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_plans_and_trains(backbone, batch, i2t, preset):
    plan = make_plan(backbone, batch, preset, seed=3)
    cfg = PRESETS[preset]
    N = backbone.num_tokens
    n_hint = math.prod(backbone.hint_grid or backbone.token_grid)
    # hints: ascending, distinct, on the hint grid, as many as the pick says
    K = {"none": 0, "all": n_hint}.get(cfg.hint_pick, math.floor(cfg.hint_ratio * n_hint))
    assert plan.hint_idx.shape == (B, K)
    if K:
        assert (plan.hint_idx.diff(dim=1) > 0).all() and plan.hint_idx.max() < n_hint
    # seen: N - floor(gamma N) per sample; equal counts where the encoder needs them
    seen = plan.seen.sum(1)
    assert torch.equal(seen, N - torch.floor(plan.mask_ratio * N).long())
    if backbone.mask_per_batch:
        assert (seen == seen[0]).all()
    # targets: masked tokens only; all of them, or drop-loss's top share of them
    targets, masked = plan.loss_weight > 0, ~plan.seen
    assert not (targets & plan.seen).any()
    if cfg.loss_target_ratio is None:
        assert torch.equal(targets, masked)
    else:
        want = torch.floor(cfg.loss_target_ratio * masked.sum(1).double()).clamp(min=1).long()
        assert torch.equal(targets.sum(1), want)
    if preset == "segros":  # top-eta hints, bottom tokens seen, by the perturbed map
        m = plan.grounding.perturbed
        assert torch.equal(plan.hint_idx, m.topk(K, dim=1).indices.sort(dim=1).values)
        for b in range(B):
            assert m[b][plan.seen[b]].max() <= m[b][masked[b]].min()
    assert plan.text_condition == cfg.text_condition

    terms = backbone(batch, plan=plan, i2t=i2t)
    loss = terms["recon"] + terms["i2t"]
    recon_term, i2t_term = float(terms["recon"].detach()), float(terms["i2t"].detach())
    assert math.isfinite(float(loss.detach())) and recon_term > 0 and i2t_term > 0
    loss.backward()
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    try:  # DDP waits for a gradient of every trainable parameter
        assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
        assert any(float(p.grad.abs().sum()) > 0 for _, p in trainable)
    finally:
        backbone.zero_grad(set_to_none=True)


def test_dropped_hints_equal_no_hints_and_kept_hints_matter(backbone, batch):
    plan = make_plan(backbone, batch, "segros", seed=2, hint_prob=0.0)
    assert plan.num_hints > 0 and plan.hint_keep is not None and not plan.hint_keep.any()
    none = dataclasses.replace(plan, hint_idx=plan.hint_idx[:, :0], hint_keep=None)
    kept = dataclasses.replace(plan, hint_keep=None)
    assert torch.allclose(recon(backbone, batch, plan), recon(backbone, batch, none), atol=1e-5)
    assert not torch.allclose(recon(backbone, batch, kept), recon(backbone, batch, none), atol=1e-4)


def test_text_condition_decides_whether_the_caption_is_read(backbone, batch):
    def swapped(b: T2IBatch) -> T2IBatch:  # every sample gets another sample's caption
        order = torch.arange(B).roll(1)
        stop = None if b.caption_stopword is None else b.caption_stopword[order]
        text = {k: getattr(b, k)[order] for k in ("text_ids", "text_mask", "caption_mask")}
        return b.replace(**text, caption_stopword=stop, captions=[b.captions[i] for i in order])

    reca = make_plan(backbone, batch, "reca")
    assert recon(backbone, batch, reca) == recon(backbone, swapped(batch), reca)
    sft = make_plan(backbone, batch, "sft")
    assert recon(backbone, batch, sft) != recon(backbone, swapped(batch), sft)


def test_declared_capabilities_hold_for_the_model(backbone, batch, i2t):
    """``capabilities`` is what the config layer trusts to refuse knobs, so it must be true: a
    token-masking backbone's loss depends on which tokens are seen, a non-masking one's does not;
    the image-to-text loss reaches a trainable weight exactly when it is declared to train."""
    caps = backbone.capabilities
    assert isinstance(caps, Capabilities)
    plan = make_plan(backbone, batch, "sft")
    assert 0 < int(plan.seen.sum()) < plan.seen.numel()
    moved = dataclasses.replace(  # other tokens seen (same count per sample), targets moved along
        plan, seen=plan.seen.roll(1, dims=1), loss_weight=plan.loss_weight.roll(1, dims=1)
    )
    same = torch.allclose(recon(backbone, batch, plan), recon(backbone, batch, moved), atol=1e-6)
    assert same != caps.masks_tokens
    assert backbone.i2t_loss(i2t).requires_grad == caps.trains_image_to_text


def test_dropped_captions_become_the_empty_prompt(backbone, batch):
    plan = make_plan(backbone, batch, "sft")
    every = batch.replace(drop_caption=torch.ones(B, dtype=torch.bool))
    ids, mask = backbone.condition(every, True)
    empty_ids, empty_mask = backbone.fit_prompt(*backbone.empty_prompt(B, ids.device), ids.shape[1])
    assert torch.equal(ids, empty_ids) and torch.equal(mask, empty_mask)
    no_text = dataclasses.replace(plan, text_condition=False)
    if getattr(backbone, "recon_text", None) is None:  # the caption-less condition is the empty prompt
        assert torch.allclose(recon(backbone, every, plan), recon(backbone, batch, no_text), atol=1e-5)
    else:  # BAGEL's is RecA's reconstruction instruction (tests/test_bagel.py), dropped to no text
        assert backbone.condition(batch.replace(drop_caption=None), False)[1].any()
        assert not backbone.condition(every, False)[1].any()
    some = batch.replace(drop_caption=torch.tensor([False, True, False, True]))
    ids, mask = backbone.condition(some, True)
    text_ids, text_mask = backbone.fit_prompt(batch.text_ids, batch.text_mask, ids.shape[1])
    assert torch.equal(ids[0], text_ids[0]) and torch.equal(ids[1], empty_ids[1])
    assert torch.equal(mask[2], text_mask[2]) and torch.equal(mask[3], empty_mask[3])
    # the trainer's draw: seeded, one flag per sample
    draws = [backbone.drop_captions(batch.replace(), torch.Generator().manual_seed(s)) for s in (0, 0)]
    assert draws[0].drop_caption.shape == (B,) and torch.equal(draws[0].drop_caption, draws[1].drop_caption)


# --- generation and storage --------------------------------------------------------------------


def test_generation_is_seeded_and_decodes_its_tokens(backbone):
    prompts = ["a photo of a red circle", "a photo of two blue squares"]
    size = backbone.image_size

    def run(seed: int) -> torch.Tensor:
        return backbone.generate_tokens(prompts, torch.Generator().manual_seed(seed), steps=2)

    tokens = run(0)
    assert torch.equal(tokens, run(0)) and not torch.equal(tokens, run(1))
    images = backbone.generate(prompts, torch.Generator().manual_seed(0), steps=2)
    assert images.shape == (2, size, size, 3) and images.dtype == torch.uint8
    assert torch.equal(images, backbone.decode_tokens(tokens))


def test_save_and_load_round_trip(name, section, backbone, batch, i2t, tmp_path):
    cls = backbone_class(name)
    backbone.save_pretrained(tmp_path)
    config = saved_config(tmp_path)
    assert config["backbone"] == name and config["options"] == backbone.options.model_dump()
    assert all((tmp_path / f).exists() for f in cls.saved_files)
    loaded = load_backbone(tmp_path).eval()
    assert type(loaded) is cls and loaded.token_grid == backbone.token_grid
    for (k, v), (k2, v2) in zip(backbone.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    plan = make_plan(backbone, batch, "segros")
    assert torch.equal(recon(backbone, batch, plan), recon(loaded, batch.replace(), plan))
    with torch.no_grad():
        torch.manual_seed(1)
        a = backbone.i2t_loss(i2t.replace())
        torch.manual_seed(1)
        assert torch.equal(a, loaded.i2t_loss(i2t.replace()))
    prompt = ["a photo of a green triangle"]
    assert torch.equal(
        backbone.generate(prompt, torch.Generator().manual_seed(5), steps=2),
        loaded.generate(prompt, torch.Generator().manual_seed(5), steps=2),
    )
    # init_from a saved folder: the config's reload options apply, all else is the checkpoint's
    asked = cls.Options(**{**section, "init_from": str(tmp_path), "caption_dropout": 0.3, "image_size": 128})
    again = cls.from_options(asked)
    assert again.caption_dropout == 0.3 and again.image_size == backbone.image_size
    # a folder of another backbone, or with its weights missing, is refused naming why
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "backbone": "elsewhere"}))
    with pytest.raises(ValueError, match="'elsewhere' checkpoint"):
        cls.from_pretrained(other)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        cls.from_pretrained(tmp_path)


BLOCK_CLASSES = {  # what run.compile compiles: the trainable repeated blocks, frozen towers left out
    "tiny": {"Block"},
    "showo": {"PhiDecoderLayer"},
    "harmon": {"Qwen2DecoderLayer", "Block"},
    "openuni": {"SanaTransformerBlock"},
    "bagel": {"MoTDecoderLayer"},
}


def test_transformer_blocks_are_the_trainable_repeated_blocks(name, backbone):
    blocks = backbone.transformer_blocks()
    assert {type(b).__name__ for b in blocks} == BLOCK_CLASSES[name]
    assert len(blocks) >= 2 and len({id(b) for b in blocks}) == len(blocks)
    assert all(any(p.requires_grad for p in b.parameters()) for b in blocks)
    inner = {id(m) for b in blocks for m in b.modules() if m is not b}
    assert not inner & {id(b) for b in blocks}  # outermost only: no block inside another
    # a frozen block is not one
    flags = [p.requires_grad for p in blocks[0].parameters()]
    frozen = blocks[0].requires_grad_(False)
    try:
        assert all(b is not frozen for b in backbone.transformer_blocks())
    finally:
        for p, flag in zip(frozen.parameters(), flags, strict=True):
            p.requires_grad_(flag)
