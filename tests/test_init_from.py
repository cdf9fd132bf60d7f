"""``model.init_from`` names a model folder, a run folder (its newest intact checkpoint) or a run's
``checkpoints/latest`` file: all three start training from the same weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_config

from segros.train.loop import Trainer, train


def test_init_from_a_run_folder_its_latest_file_or_its_checkpoint_loads_the_newest_weights(
    small_tokenizer, tmp_path
):
    train(tiny_config(small_tokenizer, "run.max_steps=4", "run.save_every=2"), tmp_path / "first")
    newest = load_file(str(tmp_path / "first/checkpoints/step-4/model.safetensors"))
    older = load_file(str(tmp_path / "first/checkpoints/step-2/model.safetensors"))
    assert any(not torch.equal(newest[k], older[k]) for k in newest)  # the steps moved the weights

    for source in ("first", "first/checkpoints/latest", "first/checkpoints/step-4"):
        cfg = tiny_config(small_tokenizer, f"model.init_from={tmp_path / source}", "run.max_steps=1")
        state = Trainer(cfg, tmp_path / f"next-{source.count('/')}").backbone.state_dict()
        assert state.keys() == newest.keys(), source
        assert all(torch.equal(state[k], newest[k]) for k in newest), source


def test_init_from_a_folder_that_holds_no_model_is_a_clear_error(small_tokenizer, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a tiny checkpoint .missing config.json"):
        Trainer(tiny_config(small_tokenizer, f"model.init_from={tmp_path / 'empty'}"), tmp_path / "a")
    (tmp_path / "unsaved/checkpoints").mkdir(parents=True)  # a run that never saved
    with pytest.raises(FileNotFoundError, match="run folder with no complete checkpoint"):
        Trainer(tiny_config(small_tokenizer, f"model.init_from={tmp_path / 'unsaved'}"), tmp_path / "b")
