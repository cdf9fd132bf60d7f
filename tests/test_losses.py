"""Loss terms read only the plan's targets and normalise by the weight sum."""

import math

import pytest
import torch

from segros.losses import i2t_loss, masked_cross_entropy, total_loss


def test_cross_entropy_reads_only_weighted_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    targets = torch.randint(0, 7, (2, 5))
    weight = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float32)
    loss = masked_cross_entropy(logits, targets, weight)
    logp = logits.log_softmax(-1)
    picks = [(0, 0), (0, 2), (1, 3), (1, 4)]
    want = -sum(logp[b, i, targets[b, i]] for b, i in picks) / 4
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0
    # perturbing a prediction at an unweighted position changes nothing
    changed = logits.detach().clone()
    changed[1, 0] += 5.0
    torch.testing.assert_close(masked_cross_entropy(changed, targets, weight), loss.detach())


def test_no_targets_gives_zero_not_nan():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))
    assert loss.item() == 0.0
    loss.backward()  # still differentiable


def test_i2t_is_next_token_nll_on_answers_only():
    V = 5
    tokens = torch.tensor([[0, 1, 2, 3]])
    answer = torch.tensor([[False, False, True, True]])
    logits = torch.zeros(1, 4, V)
    logits[0, 1, 2] = 10.0  # position 1 predicts token 2 confidently
    loss = i2t_loss(logits, tokens, answer)
    p_good = math.exp(10) / (math.exp(10) + 4)
    want = (-math.log(p_good) - math.log(1 / V)) / 2  # token 2 (confident) and token 3 (uniform)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_total_is_recon_plus_lambda_i2t():
    assert total_loss(torch.tensor(2.0), torch.tensor(3.0), 0.5).item() == 3.5
    assert total_loss(torch.tensor(2.0), torch.tensor(3.0), 0.0).item() == 2.0


def test_shape_errors():
    with pytest.raises(ValueError, match="weight"):
        masked_cross_entropy(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 2))
