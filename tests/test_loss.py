"""The Poisson loss: NaN targets ignored, negative targets clamped at 0 (finite, bounded below)."""

import torch

from twinserve.training.loss import poisson_loss


def test_negative_targets_give_a_finite_loss_and_finite_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 30, 7, requires_grad=True)
    rates = torch.nn.functional.softplus(logits)
    targets = torch.randn(2, 30, 7) * 3  # ΔF/F-like: half the values negative
    loss = poisson_loss(rates, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss == poisson_loss(rates, targets.clamp(min=0))


def test_negative_targets_do_not_reward_vanishing_rates():
    targets = torch.full((1, 10, 3), -5.0)
    losses = [poisson_loss(torch.full((1, 10, 3), rate), targets).item() for rate in (1.0, 1e-3, 1e-30, 0.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] == 0.0  # the rate itself: never below 0
    rates = torch.zeros(1, 10, 3, requires_grad=True)
    poisson_loss(rates, targets).backward()
    assert torch.isfinite(rates.grad).all() and (rates.grad > 0).all()


def test_nan_targets_are_ignored_and_positive_ones_unchanged():
    rates = torch.tensor([[[0.5, 2.0], [1.0, 3.0]]])
    targets = torch.tensor([[[1.0, float("nan")], [2.0, 0.0]]])
    expected = ((0.5 - 1.0 * torch.log(torch.tensor(0.5 + 1e-8))) + (1.0 - 2.0 * torch.log(torch.tensor(1.0 + 1e-8)))
                + 3.0) / 3
    assert torch.isclose(poisson_loss(rates, targets), expected)
