"""The twin's shapes, causality and normalisation."""

import numpy as np
import pytest
import torch

from twinserve.training.model import Twin
from twinserve.training.presets import PRESETS


def make_twin(preset="tiny", neurons=None):
    torch.manual_seed(0)
    model = Twin(PRESETS[preset], neurons or {"a": 7, "b": 11})
    with torch.no_grad():  # non-trivial readouts, shifter and modulator so every path carries signal
        for head in model.heads.values():
            head.readout.position.uniform_(-0.8, 0.8)
            head.readout.weight.normal_()
            head.modulator.weight.normal_(0, 0.3)
            head.shifter[2].weight.normal_(0, 0.3)
    return model.eval()


def inputs(frames=30, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, frames, 36, 64, generator=g) * 255, torch.randn(batch, frames, 2, generator=g),
            torch.randn(batch, frames, 2, generator=g))


@pytest.mark.parametrize("preset, receptive_field", [("tiny", 5), ("small", 19), ("base", 19)])
def test_shapes_and_receptive_field(preset, receptive_field):
    model = make_twin(preset)
    assert model.receptive_field == receptive_field
    out = model("b", *inputs(frames=receptive_field + 4))
    assert out.shape == (2, 5, 11)
    assert torch.all(out >= 0) and torch.all(torch.isfinite(out))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_changing_frame_t_changes_no_earlier_prediction(which):
    model = make_twin("small")
    t, frames = 30, 45
    original = inputs(frames)
    changed = [x.clone() for x in original]
    changed[which][:, t] += 50.0 if which == 0 else 3.0
    with torch.no_grad():
        before, after = model("a", *original), model("a", *changed)
    first_affected = t - (model.receptive_field - 1)  # output j predicts input frame j + R - 1
    torch.testing.assert_close(after[:, :first_affected], before[:, :first_affected], rtol=0, atol=0)
    assert (after[:, first_affected] - before[:, first_affected]).abs().max() > 1e-4


def test_prediction_depends_only_on_the_receptive_field():
    model = make_twin("tiny")
    video, behavior, pupil = inputs(frames=40)
    with torch.no_grad():
        full = model("a", video, behavior, pupil)
        window = model("a", video[:, 20:25], behavior[:, 20:25], pupil[:, 20:25])
    torch.testing.assert_close(window[:, 0], full[:, 20], rtol=1e-5, atol=1e-6)


def test_normalisation_is_inside_the_model():
    model = make_twin("tiny")
    head = model.heads["a"]
    stats = {"videos": {"mean": np.float64(100.0), "std": np.float64(40.0)},
             "behavior": {"mean": np.array([5.0, 2.0]), "std": np.array([1.0, 3.0])},
             "pupil_center": {"mean": np.array([200.0, 150.0]), "std": np.array([4.0, 2.0])},
             "responses": {"mean": np.full(7, 2.0), "std": np.full(7, 4.0)}}
    head.initialize(stats)
    video, behavior, pupil = inputs(frames=10)
    with torch.no_grad():
        raw = model("a", video, behavior, pupil)
        rates = model.rates("a", video, behavior, pupil)
    torch.testing.assert_close(raw, rates * 4.0)
    np.testing.assert_allclose(head.normalize(video, behavior, pupil)[0].numpy(), (video.numpy() - 100) / 40, rtol=1e-5)


def test_bad_requests_are_refused():
    model = make_twin("tiny")
    with pytest.raises(KeyError, match="unknown recording 'c'"):
        model("c", *inputs())
    with pytest.raises(ValueError, match="at least 5 frames"):
        model("a", *inputs(frames=3))
