"""Resuming reads a checkpoint's weights into the live parameters in place
(``segros.train.engines.copy_weights_into``): the result is ``load_state_dict``'s, for every dtype
and for tied weights, and a file that does not fit the model is refused naming what differs."""

import pytest
import torch
from safetensors.torch import save_file

from segros.backbones.files import plain_state
from segros.train.engines import copy_weights_into


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.head = torch.nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight  # tied, as language models tie input and output tables
        self.half = torch.nn.Linear(6, 3).to(torch.bfloat16)
        self.register_buffer("counts", torch.arange(5, dtype=torch.int64))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.strided = torch.nn.Parameter(torch.randn(4, 6).t())  # not contiguous: the buffered path


def test_weights_read_in_place_equal_load_state_dict(tmp_path):
    torch.manual_seed(0)
    source = Tied()
    with torch.no_grad():
        source.counts.mul_(3)
        source.flags.logical_not_()
    save_file(plain_state(source.state_dict()), str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    target, reference = Tied(), Tied()
    reference.load_state_dict(source.state_dict())
    copy_weights_into(target, tmp_path / "model.safetensors")
    for (name, got), want in zip(target.state_dict().items(), reference.state_dict().values(), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert target.head.weight is target.emb.weight  # still tied


def test_a_file_that_does_not_fit_is_refused(tmp_path):
    model = torch.nn.Linear(4, 3)
    save_file({"weight": torch.zeros(3, 4)}, str(tmp_path / "short.safetensors"))
    with pytest.raises(RuntimeError, match=r"missing \['bias'\]"):
        copy_weights_into(model, tmp_path / "short.safetensors")
    save_file({"weight": torch.zeros(4, 4), "bias": torch.zeros(3)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(RuntimeError, match=r"weight has shape \(4, 4\), the model \(3, 4\)"):
        copy_weights_into(model, tmp_path / "wide.safetensors")
