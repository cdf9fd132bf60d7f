"""Supervision plans (Sec. 3.4): counts, disjointness, exact picks, presets, reproducibility."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import random_batch

from segros.grounding import GroundingConfig, ground
from segros.plan import PRESETS, PlanConfig, make_plan, plan_batch, preset, resample_grid
from segros.schedules import sample_mask_ratio

ratios = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def grounded(B=3, N=16, seed=0, noise=0.5):
    text, image, valid = random_batch(B=B, N=N, seed=seed)
    return ground(text, image, valid, GroundingConfig(noise_scale=noise), torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(
    gammas=st.lists(ratios, min_size=1, max_size=4),
    eta=ratios,
    n=st.integers(min_value=1, max_value=40),
    seen_pick=st.sampled_from(["bottom", "top", "random"]),
    hint_pick=st.sampled_from(["top", "bottom", "random"]),
)
def test_masked_count_is_floor_gamma_n(gammas, eta, n, seen_pick, hint_pick):
    B = len(gammas)
    g = grounded(B=B, N=n)
    cfg = PlanConfig(hint_ratio=eta, hint_pick=hint_pick, seen_pick=seen_pick)
    plan = make_plan(cfg, torch.tensor(gammas, dtype=torch.float64), n, g, torch.Generator().manual_seed(1))
    assert plan.masked.sum(1).tolist() == [math.floor(gm * n) for gm in gammas]
    assert plan.num_hints == math.floor(eta * n)
    assert torch.equal(plan.loss_weight, plan.masked.float())  # no drop-loss: every masked token
    hints = plan.hint_idx
    assert (hints[:, 1:] > hints[:, :-1]).all()  # ascending, no repeats


@settings(max_examples=60, deadline=None)
@given(gamma=ratios, eta=ratios, n=st.integers(min_value=1, max_value=40))
def test_hints_and_seen_are_disjoint_when_they_fit(gamma, eta, n):
    g = grounded(B=2, N=n, noise=0.0)  # noise 0 makes ties likely: ordering must still be shared
    plan = make_plan(PlanConfig(hint_ratio=eta), torch.tensor([gamma, gamma], dtype=torch.float64), n, g)
    hinted = torch.zeros_like(plan.seen).scatter(1, plan.hint_idx, True)
    if eta + (1 - gamma) <= 1:
        assert not (hinted & plan.seen).any()


@settings(max_examples=40, deadline=None)
@given(eta=ratios, n=st.integers(min_value=2, max_value=40), seed=st.integers(0, 1000))
def test_hints_are_exactly_the_top_k_of_perturbed(eta, n, seed):
    g = grounded(B=2, N=n, seed=seed)
    plan = make_plan(PlanConfig(hint_ratio=eta), torch.tensor([0.8, 0.9]), n, g)
    k = math.floor(eta * n)
    for b in range(2):
        chosen = set(plan.hint_idx[b].tolist())
        assert len(chosen) == k
        if 0 < k < n:
            # every hint scores at least as high as every non-hint
            others = [i for i in range(n) if i not in chosen]
            assert g.perturbed[b, list(chosen)].min() >= g.perturbed[b, others].max()


def test_seen_bottom_keeps_the_least_grounded_tokens():
    g = grounded(B=2, N=20)
    plan = make_plan(PlanConfig(), torch.tensor([0.75, 0.9]), 20, g)
    for b in range(2):
        seen = plan.seen[b]
        assert g.perturbed[b][seen].max() <= g.perturbed[b][~seen].min()
    top = make_plan(PlanConfig(seen_pick="top"), torch.tensor([0.75, 0.9]), 20, g)
    assert g.perturbed[0][top.seen[0]].min() >= g.perturbed[0][~top.seen[0]].max()


def test_seed_reproduces_a_plan_exactly_and_other_seeds_differ():
    text, image, valid = random_batch(B=4, N=32)

    def run(seed, name):
        gen = torch.Generator().manual_seed(seed)
        ratio = sample_mask_ratio("cosine", 4, gen)
        return plan_batch(text, image, valid, preset(name), ratio, gen)

    for name in PRESETS:
        a, b = run(3, name), run(3, name)
        assert torch.equal(a.hint_idx, b.hint_idx) and torch.equal(a.seen, b.seen)
        assert torch.equal(a.loss_weight, b.loss_weight)
    assert not torch.equal(run(3, "segros").seen, run(4, "segros").seen)


def test_permuting_image_tokens_permutes_the_plan():
    text, image, valid = random_batch(B=2, N=24, seed=5)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    cfg = PlanConfig(grounding=GroundingConfig(noise_scale=0.0))
    ratio = torch.tensor([0.8, 0.85])
    p1 = plan_batch(text, image, valid, cfg, ratio)
    p2 = plan_batch(text, image[:, perm], valid, cfg, ratio)
    assert torch.equal(p2.seen, p1.seen[:, perm])
    hinted1 = torch.zeros_like(p1.seen).scatter(1, p1.hint_idx, True)
    hinted2 = torch.zeros_like(p2.seen).scatter(1, p2.hint_idx, True)
    assert torch.equal(hinted2, hinted1[:, perm])


def test_appending_text_padding_does_not_change_the_plan():
    text, image, valid = random_batch(B=2, N=16, seed=6)
    ratio = torch.tensor([0.7, 0.9])
    p1 = plan_batch(text, image, valid, PlanConfig(), ratio, torch.Generator().manual_seed(2))
    text2 = torch.cat([text, torch.randn(2, 4, text.shape[-1])], 1)
    valid2 = torch.cat([valid, torch.zeros(2, 4, dtype=torch.bool)], 1)
    p2 = plan_batch(text2, image, valid2, PlanConfig(), ratio, torch.Generator().manual_seed(2))
    assert torch.equal(p1.seen, p2.seen) and torch.equal(p1.hint_idx, p2.hint_idx)


def test_presets_bundle_the_paper_baselines():
    text, image, valid = random_batch(B=2, N=16, seed=7)
    ratio = torch.tensor([0.8, 0.8])
    plans = {
        name: plan_batch(text, image, valid, preset(name), ratio, torch.Generator().manual_seed(0))
        for name in PRESETS
    }
    assert plans["sft"].num_hints == 0 and plans["sft"].text_condition and plans["sft"].grounding is None
    assert plans["reca"].num_hints == 16 and not plans["reca"].text_condition
    assert plans["reca_filtered"].num_hints == 4 and not plans["reca_filtered"].text_condition
    assert plans["segros"].num_hints == 4 and plans["segros"].text_condition
    assert not torch.equal(plans["segros"].seen, plans["sft"].seen)
    # drop-loss: only the top-30% grounded masked tokens carry loss
    drop = plans["segros_droploss"]
    n_masked = drop.masked.sum(1)
    assert drop.loss_weight.sum(1).tolist() == [max(1, math.floor(0.3 * int(m))) for m in n_masked]
    assert not (drop.loss_weight.bool() & drop.seen).any()
    g = drop.grounding.perturbed
    for b in range(2):
        target, rest = drop.loss_weight[b].bool(), drop.masked[b] & ~drop.loss_weight[b].bool()
        assert g[b][target].min() >= g[b][rest].max()


def test_preset_overrides_and_unknown_names():
    assert preset("segros", hint_ratio=0.5).hint_ratio == 0.5
    assert preset("segros").hint_ratio == 0.3
    with pytest.raises(ValueError, match="preset"):
        preset("nope")
    with pytest.raises(ValueError, match="hint_pick"):
        PlanConfig(hint_pick="middle")
    with pytest.raises(ValueError, match="seen_pick"):
        PlanConfig(seen_pick="all")
    with pytest.raises(ValueError, match="hint_ratio"):
        PlanConfig(hint_ratio=1.2)
    with pytest.raises(ValueError, match="loss_target_ratio"):
        PlanConfig(loss_target_ratio=-0.1)


def test_bad_plan_inputs():
    g = grounded(B=2, N=16)
    with pytest.raises(ValueError, match=r"mask_ratio.*sample index \[1\]"):
        make_plan(PlanConfig(), torch.tensor([0.5, 1.5]), 16, g)
    with pytest.raises(ValueError, match="needs a grounding"):
        make_plan(PlanConfig(), torch.tensor([0.5, 0.5]), 16, None)
    with pytest.raises(ValueError, match="grounding covers"):
        make_plan(PlanConfig(), torch.tensor([0.5, 0.5]), 20, g)


def test_hints_on_another_grid_use_the_resampled_map():
    text, image, valid = random_batch(B=2, N=16, seed=8)  # a 4x4 token grid
    cfg = PlanConfig(hint_ratio=0.25, grounding=GroundingConfig(noise_scale=0.0))
    plan = plan_batch(text, image, valid, cfg, torch.tensor([0.8, 0.8]), token_grid=(4, 4), hint_grid=(6, 6))
    assert plan.hint_grid == (6, 6)
    assert plan.num_hints == 9  # floor(0.25 * 36)
    assert int(plan.hint_idx.max()) < 36
    resampled = resample_grid(plan.grounding.scores, (4, 4), (6, 6))
    for b in range(2):
        chosen = resampled[b, plan.hint_idx[b]]
        others = resampled[b][~torch.zeros(36, dtype=torch.bool).scatter(0, plan.hint_idx[b], True)]
        assert chosen.min() >= others.max()


def test_resample_grid_is_area_averaging():
    scores = torch.arange(16.0).reshape(1, 16)
    down = resample_grid(scores, (4, 4), (2, 2))
    torch.testing.assert_close(down, torch.tensor([[2.5, 4.5, 10.5, 12.5]]))
    with pytest.raises(ValueError, match="source grid"):
        resample_grid(scores, (3, 3), (2, 2))


@pytest.mark.parametrize("schedule", ["cosine", "truncnorm", "uniform"])
def test_schedules_range_and_batching(schedule):
    gen = torch.Generator().manual_seed(0)
    r = torch.cat([sample_mask_ratio(schedule, 8, gen) for _ in range(200)])
    assert r.dtype == torch.float64 and r.min() >= 0 and r.max() <= 1
    if schedule == "truncnorm":
        assert r.min() >= 0.7
        one = sample_mask_ratio(schedule, 8, gen)
        assert (one == one[0]).all()  # MAR: one ratio per batch, equal visible counts
        assert 0.85 < r.mean() < 0.9  # mean of N(1, .25) truncated to [.7, 1] is about 0.87
    if schedule == "uniform":
        assert r.min() >= 0.7 and r.max() < 1.0 and abs(r.mean() - 0.85) < 0.01
    if schedule == "cosine":
        # gamma = cos(pi/2 t), t ~ U[0, 1): mean 2/pi
        assert abs(r.mean() - 2 / math.pi) < 0.03
        assert len(set(sample_mask_ratio(schedule, 8, gen).tolist())) == 8  # per sample
