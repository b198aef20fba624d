"""The family of virtual mice (training/virtual_mouse/family.py): members differ in every generative
choice, deterministically, and each keeps its truth beside it."""
import json

import numpy as np
import pytest

from twinserve.training.virtual_mouse import synthesize
from twinserve.training.virtual_mouse.family import HELD_OUT_SEEDS, RF_FAMILIES, Variant, draw_variant, variant


def test_members_are_deterministic_and_span_the_stated_ranges():
    members = [draw_variant(k) for k in range(60)]
    assert draw_variant(7) == draw_variant(7) and draw_variant(7) != draw_variant(8)
    ceilings = [np.mean(m.reliability) for m in members]
    assert min(ceilings) < 0.25 and max(ceilings) > 0.55
    gains = [m.running_gain[0] for m in members]
    assert min(gains) < 0.03 and max(gains) > 0.4          # behaviour negligible … dominant
    assert any(m.retinotopy_scatter is None for m in members) and any(
        m.retinotopy_scatter is not None and m.retinotopy_scatter < 1 for m in members)
    assert min(m.neurons for m in members) < 600 and max(m.neurons for m in members) > 5000
    assert min(m.train_minutes for m in members) < 8 and max(m.train_minutes for m in members) > 40
    for k, family in enumerate(RF_FAMILIES):  # every RF family appears, and members mix several
        assert any(m.rf_mix[k] > 0.2 for m in members), family
    assert all(sum(w > 0 for w in m.rf_mix) >= 2 for m in members)
    assert min(HELD_OUT_SEEDS) >= 100


def test_variant_names():
    assert variant("default") == Variant()
    assert variant("family-4") == draw_variant(4)
    with pytest.raises(ValueError, match="family-<seed>"):
        variant("family-x")


def _neurons(folder):
    return {p.stem: np.load(p) for p in (folder / "truth/neurons").glob("*.npy")}


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    """A member with every RF family and no retinotopy, as one small recording."""
    chosen = Variant(name="test-member", rf_mix=(0.2, 0.2, 0.2, 0.2, 0.1, 0.1), retinotopy_scatter=None,
                     rf_overhang_px=4.0, normalized=0.5, exponent=(1.0, 3.0))
    return synthesize(tmp_path_factory.mktemp("member"), recordings=1, neurons=120, train_minutes=0.5,
                      repeats=2, oracle_clips=2, test_clips=1, progress=False, variant=chosen)[0]


def test_member_truth_describes_each_family(member):
    truth = _neurons(member)
    family = truth["rf_family"]
    assert set(np.unique(family)) == set(range(len(RF_FAMILIES)))
    osi = truth["osi"]
    dog = np.isin(family, [RF_FAMILIES.index("center_surround"), RF_FAMILIES.index("untuned")])
    gabor = np.isin(family, [RF_FAMILIES.index("gabor_simple"), RF_FAMILIES.index("gabor_complex")])
    assert np.median(osi[dog]) < 0.1 < np.median(osi[gabor])  # DoG neurons are not orientation tuned
    filters = truth["spatial_filters"]
    assert np.abs(filters[1, dog]).max() == 0 and np.abs(filters[1, gabor]).max() > 0
    assert set(np.unique(truth["normalization"])) == {0.0, 1.0}
    assert truth["exponent"].min() >= 1.0 and truth["exponent"].max() <= 3.0
    centres = truth["rf_center"]
    assert (centres[:, 0] < 0).any() or (centres[:, 0] > 63).any() or (centres[:, 1] < 0).any()  # beyond the edge
    saved = json.loads((member / "truth/variant.json").read_text())
    assert Variant.from_dict(saved).rf_mix == (0.2, 0.2, 0.2, 0.2, 0.1, 0.1)
    assert json.loads((member / "truth/recording.json").read_text())["rf_families"] == list(RF_FAMILIES)


def test_no_retinotopy_means_coordinates_say_nothing_of_position(member):
    coordinates = np.load(member / "meta/neurons/cell_motor_coordinates.npy")[:, :2]
    centres = _neurons(member)["rf_center"]
    design = np.column_stack([coordinates, np.ones(len(coordinates))])
    fit, *_ = np.linalg.lstsq(design, centres, rcond=None)
    r2 = 1 - ((design @ fit - centres) ** 2).sum() / ((centres - centres.mean(0)) ** 2).sum()
    assert r2 < 0.15


def test_responses_are_calibrated_for_a_member(member):
    """The noise calibration holds for a drawn member too: responses correlate with the truth."""
    tiers = np.load(member / "meta/trials/tiers.npy")
    trial = int(np.flatnonzero(tiers == "oracle")[0])
    responses, expected = (np.load(member / f"{d}/{trial}.npy") for d in ("data/responses", "truth/expected"))
    keep = ~np.isnan(responses).any(0)
    keep[:50] = False
    a, b = responses[:, keep], expected[:, keep]
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    correlation = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)
    assert np.nanmedian(correlation) > 0.15


@pytest.mark.parametrize("name", ["family-8", "family-19"])
def test_tiny_learns_structurally_different_members(name, tmp_path):
    """family-8: Gabor neurons, no retinotopy; family-19: untuned and centre-surround neurons with a
    strong behavioural gain. A briefly trained `tiny` twin beats its untrained score on both."""
    from twinserve.training.train import train

    data = synthesize(tmp_path / "data", recordings=1, neurons=60, train_minutes=1.5, repeats=4, oracle_clips=2,
                      test_clips=1, progress=False, variant=variant(name))
    train(data, tmp_path / "run", preset="tiny", progress=False, steps=240, eval_every=40, minutes=60)
    state = json.loads((tmp_path / "run/checkpoint/state.json").read_text())
    untrained = state["history"][0]["validation"]
    assert state["best_score"] > untrained + 0.02, [(h["step"], h["validation"]) for h in state["history"]]


def test_population_rebuilt_from_truth_reproduces_the_expected_responses(member):
    """The rebuilt mouse answers a recorded trial (its video, behaviour and eye) with `truth/expected`,
    and `expected_responses` at mean behaviour and rest is that same model on new movies."""
    from twinserve.training.virtual_mouse.neurons import expected_rates
    from twinserve.training.virtual_mouse.rebuild import expected_responses, population_from_truth
    from twinserve.training.virtual_mouse import imaging

    pop = population_from_truth(member)
    trial = sorted((member / "truth/expected").glob("*.npy"))[0].name
    video = np.load(member / "data/videos" / trial).transpose(2, 0, 1)  # (T, H, W)
    behavior = np.load(member / "data/behavior" / trial).T
    pupil = np.load(member / "data/pupil_center" / trial).T
    valid = np.isfinite(behavior).all(1)
    rates = expected_rates(pop, video[valid], behavior[valid], pupil[valid])[None]
    rebuilt = (imaging.expected_response(rates, pop.calcium_tau, pop.baseline + pop.amplitude, 0.0)[0]
               + imaging.noise_mean(pop.noise_std))
    written = np.load(member / "truth/expected" / trial).T[valid]
    np.testing.assert_allclose(rebuilt, written, rtol=1e-4, atol=1e-4 * np.abs(written).max())

    at_rest = np.broadcast_to(pop.eye_center, pupil[valid].shape)
    mean = np.broadcast_to(pop.behavior_mean, behavior[valid].shape)
    rates = expected_rates(pop, video[valid], mean, at_rest)[None]
    again = imaging.expected_response(rates, pop.calcium_tau, pop.baseline + pop.amplitude, pop.noise_std)
    np.testing.assert_allclose(expected_responses(pop, video[valid][None]), again, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        population_from_truth(member / "data")
