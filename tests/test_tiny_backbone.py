"""What is TinyUMM's own behind the contract (tests/test_backbone_contract.py runs the rest): one
shared embedding table for grounding, code targets, the word tokenizer, loading run folders."""

import numpy as np
import pytest
import torch

from segros.backbones.registry import load_backbone
from segros.backbones.tiny.adapter import TinyBackbone, TinyOptions
from segros.backbones.tiny.text import WordTokenizer
from segros.data.sources import ShapesImageText
from segros.plan import make_plan, preset


@pytest.fixture(scope="module")
def backbone(small_tokenizer):
    torch.manual_seed(0)
    model = TinyBackbone.from_options(TinyOptions(image_tokenizer=str(small_tokenizer), image_size=32))
    return model.eval()


def t2i_batch(backbone, n=3):
    source = ShapesImageText(32, seed=0, length=100)
    return backbone.prepare_t2i([source[i] for i in range(n)])


def test_grounding_inputs_read_the_shared_table_and_caption_tokens_only(backbone):
    batch = t2i_batch(backbone)
    g = backbone.grounding_inputs(batch)
    table = backbone.model.embed.weight
    assert torch.equal(g.text_emb, table[batch.text_ids])
    assert torch.equal(g.image_emb, table[batch.extras["codes"] + backbone.cfg.code_offset])
    ids = batch.text_ids[g.text_valid]
    tok = backbone.text_tokenizer
    assert not ((ids == tok.bos_id) | (ids == tok.eos_id) | (ids == tok.pad_id)).any()


def test_loss_reads_only_the_plan_targets(backbone):
    batch = t2i_batch(backbone)
    B, N = batch.extras["codes"].shape
    g = torch.Generator().manual_seed(0)
    plan = make_plan(preset("sft"), torch.full((B,), 0.5), N, None, g)
    loss = backbone.reconstruction_loss(batch, plan)
    # changing the ground-truth code at a visible, untargeted position changes its input token,
    # but changing the target at an unweighted masked position must change nothing
    plan.loss_weight[0, plan.masked[0].nonzero()[0, 0]] = 0.0
    untargeted = plan.masked[0] & (plan.loss_weight[0] == 0)
    idx = untargeted.nonzero()[0, 0]
    loss_a = backbone.reconstruction_loss(batch, plan)
    changed = batch.replace(extras={"codes": batch.extras["codes"].clone()})
    changed.extras["codes"][0, idx] = (changed.extras["codes"][0, idx] + 1) % backbone.cfg.num_codes
    loss_b = backbone.reconstruction_loss(changed, plan)
    assert torch.equal(loss_a, loss_b)
    assert not torch.equal(loss, loss_a)  # the weights do matter


def test_word_tokenizer_round_trip_and_unknown_words():
    tok = WordTokenizer(["a", "photo", "of", "red", "circle"])
    batch = tok.batch(["a photo of a red circle", "a purple circle"], max_len=16)
    assert tok.decode(batch["ids"][0].tolist()) == "a photo of a red circle"
    assert tok.unknown_words == 1  # "purple"
    assert batch["caption"].sum(1).tolist() == [6, 3]
    assert batch["mask"].sum(1).tolist() == [8, 5]
    with pytest.raises(ValueError, match="lower-case"):
        WordTokenizer(["Bad Word"])


def test_load_backbone_accepts_a_run_folder_and_its_latest_pointer(small_tokenizer, tmp_path):
    from train_helpers import tiny_config

    from segros.train.loop import train

    train(tiny_config(small_tokenizer, "run.max_steps=2", "run.save_every=1"), tmp_path)
    by_run = load_backbone(tmp_path)
    by_pointer = load_backbone(tmp_path / "checkpoints" / "latest")
    by_folder = load_backbone(tmp_path / "checkpoints" / "step-2")
    for other in (by_pointer, by_folder):
        for (name, a), (_, b) in zip(by_run.state_dict().items(), other.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(tmp_path / "nowhere")


def test_a_fresh_model_takes_its_words_and_tokenizer_from_the_named_corpus(tmp_path, monkeypatch):
    """TinyUMM knows no data source: the config's ``model.corpus`` picks the words of its text
    tokenizer and the images its patch tokenizer is fitted on (and cached under the corpus's
    name); an unknown corpus is refused when the options are read."""
    from corpus_helpers import TOY_WORDS, toy_corpus
    from pydantic import ValidationError

    from segros.backbones.tiny.text import QUESTION_WORDS
    from segros.data import corpora

    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    monkeypatch.setitem(corpora.CORPORA, "toy", toy_corpus(colours))
    monkeypatch.setenv("SEGROS_CACHE", str(tmp_path))
    options = TinyOptions(corpus="toy", image_size=16, tokens_per_side=4, num_codes=8)
    model = TinyBackbone.from_options(options)
    assert model.text_tokenizer.words == [*TOY_WORDS, *QUESTION_WORDS]
    tiles = {tuple(np.full((4, 4, 3), c, dtype=np.uint8).reshape(-1)) for c in colours}
    rows = {tuple(row) for row in (model.image_tokenizer.codebook * 255).round().to(torch.uint8).tolist()}
    assert rows == tiles  # every code is one of the toy corpus's flat tiles, and each is a code
    cached = "tiny-image-tokenizer-16px-patch4-8codes-seed0-toy.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == [cached]
    with pytest.raises(ValidationError, match="built-in corpora are shapes"):
        TinyOptions(corpus="nowhere")


def test_a_checkpoint_saved_before_corpora_had_names_loads_unchanged(backbone, tmp_path):
    """A config.json whose options predate ``model.corpus`` (like the shipped model's) loads with the
    saved words and weights; the corpus then reads as ``shapes``."""
    import json

    backbone.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["options"].pop("corpus") == "shapes"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_backbone(tmp_path)
    assert loaded.options.corpus == "shapes" and loaded.text_tokenizer.words == backbone.text_tokenizer.words
    for (name, a), (_, b) in zip(backbone.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
