"""The geometry of benchmarks/relation_probe.py's conditional test: where B may stand given A."""

import importlib.util
from pathlib import Path

import torch

from segros.data.shapes import INVERSE

PROBE = Path(__file__).resolve().parents[1] / "benchmarks" / "relation_probe.py"


def load_probe():
    spec = importlib.util.spec_from_file_location("relation_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_named_side_marks_the_cells_where_the_relation_holds():
    probe = load_probe()
    row, col = torch.tensor([1, 1, 1, 1, 0, 2]), torch.tensor([1, 1, 1, 1, 0, 0])
    words = ["left of", "right of", "above", "below", "right of", "left of"]
    side = probe.named_side(3, row, col, words)
    cells = [set(torch.nonzero(s).flatten().tolist()) for s in side]
    # tokens are row-major: cell (r, c) is r * 3 + c; "A left of B" puts B right of A, and so on
    assert cells[0] == {5}  # A in the centre, left of B: B at (1, 2)
    assert cells[1] == {3}  # right of B: B at (1, 0)
    assert cells[2] == {7}  # above B: B below it, at (2, 1)
    assert cells[3] == {1}  # below B: B above it, at (0, 1)
    assert cells[4] == set()  # A in the top-left corner cannot be right of anything
    assert cells[5] == {7, 8}  # A bottom-left, left of B: B anywhere to its right in that row


def test_each_relation_and_its_opposite_cover_the_axis_without_overlap():
    probe = load_probe()
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    row, col = rows.flatten(), cols.flatten()
    for word, opposite in INVERSE.items():
        near = probe.named_side(4, row, col, [word] * len(row))
        far = probe.named_side(4, row, col, [opposite] * len(row))
        assert not (near & far).any()
        # with A's own cell, the two sides fill A's row (left/right) or column (above/below)
        assert ((near | far).sum(1) == 3).all()


def test_relation_matrix_pairs_cells_and_its_transpose_is_the_opposite_relation():
    probe = load_probe()
    words = ["left of", "right of", "above", "below"]
    holds = probe.relation_matrix(3, words)  # (4, 9, 9): [word, cell of A, cell of B]
    assert holds.shape == (4, 9, 9)
    # in each row of a 3 x 3 grid, 3 ordered pairs with A left of B; likewise per column
    assert [int(m.sum()) for m in holds] == [9, 9, 9, 9]
    assert holds[0, 3, 5] and holds[0, 0, 2] and not holds[0, 5, 3] and not holds[0, 0, 4]
    assert holds[2, 1, 7] and not holds[2, 7, 1]  # A at (0, 1) above B at (2, 1)
    for k, word in enumerate(words):
        assert torch.equal(holds[k].T, holds[words.index(INVERSE[word])])
