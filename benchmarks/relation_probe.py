"""Does a checkpoint use a relation word's axis and direction? (docs/miniature.md)

For "a photo of a A <relation> a B" with each of GenEval's four relations, generates the prompt
``--samples`` times, finds both objects with the ShapesWorld judge's detector and prints the mean
offset of A's box centre from B's, in pixels (image y grows downwards). A model that follows the
relation gives dx < 0 for "left of", dx > 0 for "right of", dy < 0 for "above", dy > 0 for
"below"; one that learned only the axis separates left/right prompts horizontally and above/below
prompts vertically with the same sign for both words of a pair.

Then, for a TinyUMM checkpoint, the direction *given the first object*: on ShapesWorld position
scenes of the checkpoint's world, every image token is masked except A's, and the model's
probability of B's code is summed over the cells on the side the caption names (where "A <relation>
B" would hold) and over the opposite side. It prints the share on the named side with the true
relation word and with the opposite word. A model that reads the word puts most of B's mass on the
named side; one that ignores it gives the same share for both words.

Last, the first decoding step's view: every image token masked, the chance that A's code and B's
code, each placed by the model's per-cell probabilities, stand as the caption says rather than the
opposite way, again with the true and the opposite word. A model that ignores the word gives two
shares that sum to 1; one that reads it puts both above 0.5.

    python benchmarks/relation_probe.py pretrained
    python benchmarks/relation_probe.py runs/demo/finetune-sft-seed0 --samples 48
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from segros.backbones.base import Backbone
from segros.backbones.registry import load_backbone, resolve_checkpoint
from segros.data.shapes import INVERSE
from segros.eval.checkpoint import resolve
from segros.eval.geneval import RELATIONS
from segros.eval.shapes_judge import detect

PAIRS = (("circle", "square"), ("triangle", "star"), ("diamond", "cross"))


def centre(box: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def offsets(
    backbone: Backbone, prompt: str, a: str, b: str, samples: int, seed: int
) -> tuple[np.ndarray, int]:
    """(dx, dy) of A from B averaged over the samples where the judge finds exactly one of each."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = backbone.decode_tokens(backbone.generate_tokens([prompt] * samples, generator))
    found = []
    for image in np.asarray(images):
        detections = detect(image)
        boxes_a = [d.box for d in detections if d.cls == a]
        boxes_b = [d.box for d in detections if d.cls == b]
        if len(boxes_a) == 1 and len(boxes_b) == 1:
            found.append(centre(boxes_a[0]) - centre(boxes_b[0]))
    mean = np.mean(found, axis=0) if found else np.full(2, np.nan)
    return mean, len(found)


def grid_cells(cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells * cells,) row and column of each cell, row-major like the image tokens."""
    return torch.arange(cells).repeat_interleave(cells), torch.arange(cells).repeat(cells)


def named_side(cells: int, row: torch.Tensor, col: torch.Tensor, relations: list[str]) -> torch.Tensor:
    """(S, cells * cells) bool: the cells where B stands if "A <relation> B" holds, A at (row, col)."""
    r, c = grid_cells(cells)
    row, col = row.unsqueeze(1), col.unsqueeze(1)
    by_word = {
        "left of": (r == row) & (c > col),
        "right of": (r == row) & (c < col),
        "above": (c == col) & (r > row),
        "below": (c == col) & (r < row),
    }
    return torch.stack([by_word[rel][i] for i, rel in enumerate(relations)])


def position_scenes(backbone: Backbone, world: dict, scenes: int, seed: int) -> dict:
    """``scenes`` two-object ShapesWorld position scenes of the checkpoint's world, with the cell
    (row, col), slot and code of A and of B, and the relation each caption states."""
    from segros.data.shapes import ShapesWorld

    shapes = ShapesWorld(seed=seed, caption_style="geneval", **world)
    picked = []
    index = 0
    while len(picked) < scenes:
        scene = shapes.scene(index)
        index += 1
        words = [rel for rel in RELATIONS if f" {rel} " in scene.caption]
        if len(scene.objects) == 2 and words:
            picked.append((scene, words[0]))
    cell = world["image_size"] // world["cells"]
    boxes = np.array([[centre(o.box) for o in s.objects] for s, _ in picked])
    centres = torch.from_numpy(boxes) // cell  # (S, 2, xy): the cell of A and of B
    col, row = centres[..., 0].long(), centres[..., 1].long()
    slot = row * world["cells"] + col  # (S, 2): the token of A and of B
    codes = backbone.encode_images([s.image for s, _ in picked])["codes"]
    rows = torch.arange(len(picked))
    return {
        "captions": [s.caption for s, _ in picked],
        "words": [rel for _, rel in picked],
        "row": row,
        "col": col,
        "codes": codes,
        "code_a": codes[rows, slot[:, 0]],
        "code_b": codes[rows, slot[:, 1]],
        "slot_a": slot[:, 0],
    }


def code_probabilities(
    backbone: Backbone, captions: list[str], image_ids: torch.Tensor, code: torch.Tensor
) -> torch.Tensor:
    """(S, cells) the model's probability of ``code[s]`` at every image slot of sample s."""
    text = backbone.text_tokenizer.batch(captions, backbone.cfg.max_text_len)
    with torch.no_grad():
        probs = backbone._image_logits(text["ids"], text["mask"], image_ids).softmax(-1)
    return probs.gather(-1, code.view(-1, 1, 1).expand(-1, probs.shape[1], 1)).squeeze(-1)


def with_word(captions: list[str], words: list[str], new_words: list[str]) -> list[str]:
    return [c.replace(f" {w} ", f" {n} ") for c, w, n in zip(captions, words, new_words, strict=True)]


def direction_given_first(backbone: Backbone, scenes: dict, cells: int) -> tuple[float, float, int]:
    """Share of B's code probability on the named side, with the true and the opposite relation
    word, over position scenes where both sides have a free cell (TinyUMM only)."""
    codes, rows = scenes["codes"], torch.arange(len(scenes["words"]))
    image_ids = torch.full_like(codes, backbone.cfg.mask_id)
    slot_a = scenes["slot_a"]
    image_ids[rows, slot_a] = codes[rows, slot_a] + backbone.cfg.code_offset  # only A is shown
    true_words = scenes["words"]
    opposite_words = [INVERSE[w] for w in true_words]
    row_a, col_a = scenes["row"][:, 0], scenes["col"][:, 0]
    near = named_side(cells, row_a, col_a, true_words)  # where B may be
    far = named_side(cells, row_a, col_a, opposite_words)
    usable = near.any(1) & far.any(1)
    shares = []
    for words, named, other in ((true_words, near, far), (opposite_words, far, near)):
        captions = with_word(scenes["captions"], true_words, words)
        p_b = code_probabilities(backbone, captions, image_ids, scenes["code_b"])
        on_named, on_other = (p_b * named).sum(1), (p_b * other).sum(1)
        shares.append(float((on_named / (on_named + on_other))[usable].mean()))
    return shares[0], shares[1], int(usable.sum())


def relation_matrix(cells: int, relations: list[str]) -> torch.Tensor:
    """(S, cells², cells²) bool: [s, a, b] is True when "A <relations[s]> B" holds with A in cell a
    and B in cell b."""
    r, c = grid_cells(cells)
    by_word = {rel: named_side(cells, r, c, [rel] * cells * cells) for rel in set(relations)}
    return torch.stack([by_word[rel] for rel in relations])


def direction_all_masked(backbone: Backbone, scenes: dict, cells: int) -> tuple[float, float]:
    """The first decoding step's view: every image token masked, the chance that A's code and B's
    code, placed independently by the model's per-cell probabilities, stand as the caption says,
    as a share of that chance plus the chance they stand the opposite way; with the true and with
    the opposite relation word. 0.5 when the word does not move the objects apart along its axis
    in its direction."""
    image_ids = torch.full_like(scenes["codes"], backbone.cfg.mask_id)
    true_words = scenes["words"]
    opposite_words = [INVERSE[w] for w in true_words]
    holds = relation_matrix(cells, true_words).float()  # [s, cell of A, cell of B]
    shares = []
    for words, caption_names_true_relation in ((true_words, True), (opposite_words, False)):
        captions = with_word(scenes["captions"], true_words, words)
        p_a = code_probabilities(backbone, captions, image_ids, scenes["code_a"])
        p_b = code_probabilities(backbone, captions, image_ids, scenes["code_b"])
        true_side = torch.einsum("sa,sab,sb->s", p_a, holds, p_b)
        opposite_side = torch.einsum("sa,sba,sb->s", p_a, holds, p_b)  # the opposite relation: holdsᵀ
        named = true_side if caption_names_true_relation else opposite_side
        shares.append(float((named / (true_side + opposite_side).clamp_min(1e-30)).mean()))
    return shares[0], shares[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run or checkpoint folder, or 'pretrained' (the shipped model)")
    p.add_argument("--samples", type=int, default=48, help="per prompt; 0 skips the generated offsets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=1000, help="position scenes drawn for the conditional test")
    args = p.parse_args()
    backbone = load_backbone(resolve(args.checkpoint))
    backbone.eval()
    print(f"{'prompt':46s} {'found':>7s} {'dx':>7s} {'dy':>7s}")
    for a, b in PAIRS if args.samples else ():
        for relation in RELATIONS:
            prompt = f"a photo of a {a} {relation} a {b}"
            (dx, dy), found = offsets(backbone, prompt, a, b, args.samples, args.seed)
            print(f"{prompt:46s} {found:3d}/{args.samples:<3d} {dx:+7.1f} {dy:+7.1f}")
    if hasattr(backbone, "image_tokenizer"):  # TinyUMM: the conditional test
        from segros.apps.demo import world_of

        world = world_of(resolve_checkpoint(resolve(args.checkpoint)))
        scenes = position_scenes(backbone, world, args.scenes, args.seed)
        true_share, opposite_share, used = direction_given_first(backbone, scenes, world["cells"])
        print(
            f"\ndirection given the first object ({used} scenes): share of B's probability on the named side "
            f"{true_share:.3f} with the true word, {opposite_share:.3f} with the opposite word"
        )
        true_share, opposite_share = direction_all_masked(backbone, scenes, world["cells"])
        print(
            f"direction with every token masked ({len(scenes['words'])} scenes): share of the A-B placements"
            f" on the named side {true_share:.3f} with the true word, {opposite_share:.3f} with the opposite"
            " word"
        )


if __name__ == "__main__":
    main()
