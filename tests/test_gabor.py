"""The Gabor bank and the Gabor start of a core's first layer."""

import numpy as np
import pytest
import torch

from twinserve.contract import BEHAVIOR_CHANNELS, DEFAULT_FRAME_SHAPE
from twinserve.training.factorized import FactorizedCore
from twinserve.training.gabor import first_layer_bank, gabor_bank, gabor_init_
from twinserve.training.gru import GRUCore

IN_CHANNELS = 1 + BEHAVIOR_CHANNELS


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (n, ...) tensors → (n,)."""
    a, b = a.flatten(1), b.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_bank_is_zero_mean_unit_norm_quadrature_pairs():
    bank = gabor_bank(15, (5, 10), 4).double()  # (16, 15, 15)
    assert bank.shape == (16, 15, 15)
    assert torch.allclose(bank.mean((1, 2)), torch.zeros(16, dtype=bank.dtype), atol=1e-9)
    assert torch.allclose(bank.flatten(1).norm(dim=1), torch.ones(16, dtype=bank.dtype), atol=1e-6)
    even, odd = bank[0::2].flatten(1), bank[1::2].flatten(1)
    assert (even * odd).sum(1).abs().max() < 1e-6  # symmetric and antisymmetric: orthogonal


def test_each_pair_prefers_a_grating_at_its_own_orientation():
    size, period, orientations = 15, 6.0, 4
    bank = gabor_bank(size, (period,), orientations).double()
    y, x = np.mgrid[-(size // 2): size // 2 + 1, -(size // 2): size // 2 + 1]
    for k in range(orientations):
        angle = np.pi * k / orientations
        energies = []
        for phase in np.linspace(0, 2 * np.pi, 8, endpoint=False):  # energy: the same for every phase
            grating = torch.from_numpy(np.cos(2 * np.pi * (x * np.cos(angle) - y * np.sin(angle)) / period + phase))
            response = (bank * grating).sum((1, 2))
            energies.append(response[0::2] ** 2 + response[1::2] ** 2)  # (orientations,)
        energy = torch.stack(energies)
        assert int(energy.mean(0).argmax()) == k
        assert energy[:, k].std() / energy[:, k].mean() < 0.05  # phase-invariant, as a complex cell


def test_init_sets_the_video_filters_and_keeps_the_others():
    weight = torch.nn.Conv2d(IN_CHANNELS, 16, 9).weight.detach().clone()
    before = weight.clone()
    gabor_init_(weight)
    bank = gabor_bank(9, (4.0, 8.0), 4)
    assert torch.allclose(_cosine(weight[:, 0], bank), torch.ones(16), atol=1e-5)
    assert torch.allclose(weight[:, 0].flatten(1).norm(dim=1).mean(), before[:, 0].flatten(1).norm(dim=1).mean())
    assert torch.equal(weight[:, 1:], before[:, 1:])


def test_init_rejects_a_spatiotemporal_kernel():
    with pytest.raises(ValueError, match="spatial filter bank"):
        gabor_init_(torch.zeros(8, IN_CHANNELS, 3, 5, 5))


@pytest.mark.parametrize("core, weight", [
    (lambda: FactorizedCore(IN_CHANNELS, DEFAULT_FRAME_SHAPE, (12, 8), (7, 3), (3, 3), first_stride=2),
     lambda core: core.layers[0].spatial.weight[:, 0, 0]),
    (lambda: GRUCore(IN_CHANNELS, DEFAULT_FRAME_SHAPE, (8,), (5,), hidden=8, gru_kernel=3),
     lambda core: core.cnn[0].conv.weight[:, 0]),
])
def test_cores_start_from_gabor_filters(core, weight):
    torch.manual_seed(0)
    filters = weight(core()).detach()
    count, size = filters.shape[0], filters.shape[-1]
    assert torch.allclose(_cosine(filters, first_layer_bank(count, size)), torch.ones(count), atol=1e-5)
