"""The closed-form readout of a transferred twin: ridge regression on the trained core's features."""

import numpy as np
import pytest
import torch

from twinserve.training.data import Trial
from twinserve.training.model import Twin, screen_share
from twinserve.training.positions import grid_centres, grid_for
from twinserve.training.presets import PRESETS
from twinserve.training.readout_fit import _cell_features, fit_readout, lost_neurons, refit_readout


def linear_mouse(preset: str, neurons: int = 12, frame_shape=(36, 64)):
    """An untrained twin and 3 random trials whose responses are exactly linear in the pooled
    features of one random cell per neuron → (model, trials, cells (N,), drives (T, N), the cells'
    features (T, N, C))."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Twin(PRESETS[preset].model_config(), {"mouse": neurons}, frame_shape=frame_shape).eval()
    grid = grid_for(frame_shape)
    cells = rng.choice(grid[0] * grid[1], neurons, replace=False)
    weights = rng.normal(0, 1, (model.core.out_channels, neurons))
    bias = rng.normal(0, 0.2, neurons)
    trials, drives, cell_features = [], [], []
    for index in range(3):
        video = rng.normal(128, 40, (120, *frame_shape)).astype(np.float32)
        behavior, pupil = rng.normal(0, 1, (120, 2)).astype(np.float32), rng.normal(0, 1, (120, 2)).astype(np.float32)
        trial = Trial(index, "train", video, behavior, pupil, None)
        with torch.no_grad():
            features = _cell_features(model, "mouse", trial, grid)[0].numpy()  # (T', G, C)
        drive = np.einsum("tnc,cn->tn", features[:, cells], weights) + bias
        responses = np.full((120, neurons), np.nan, np.float32)
        responses[model.offset:] = drive + 1  # the rate is elu(drive) + 1
        trial.responses = responses
        trials.append(trial)
        drives.append(drive)
        cell_features.append(features[:, cells])
    return model, trials, cells, np.concatenate(drives), np.concatenate(cell_features)


def cell_centres(model: Twin) -> np.ndarray:
    """Where on the screen the core's cells pooled into each grid cell lie (G, 2): the grid's centres
    less the readout's offset (`cores.cell_offset`)."""
    return grid_centres(grid_for(model.frame_shape)) - model.heads["mouse"].readout.offset.numpy()


@pytest.mark.parametrize("preset", ["tiny", "gru-tiny"])
def test_the_fit_finds_each_neurons_cell_and_weights_when_responses_are_linear_in_the_features(preset):
    """Responses made exactly linear in the pooled features of one known cell per neuron are read
    back: the cell, and weights and bias that give the same drive (up to the ridge's small shrinkage;
    channels that do not vary cannot be told apart, so drives are compared, not weights)."""
    model, trials, cells, drive, features = linear_mouse(preset)

    explained = fit_readout(model, "mouse", trials)

    readout = model.heads["mouse"].readout
    assert np.allclose(readout.position.detach().numpy(), cell_centres(model)[cells])
    fitted = np.einsum("tnc,cn->tn", features, readout.weight.detach().numpy()) + readout.bias.detach().numpy()
    relative_error = np.sqrt(((fitted - drive) ** 2).mean(0)) / drive.std(0)  # per neuron
    assert relative_error.max() < 0.1, relative_error  # the ridge shrinks weak feature directions: 0.05 here
    assert (explained > 0.9).all() and (explained <= 1 + 1e-9).all()  # fractions of the variance


def test_a_refit_moves_only_the_neurons_that_read_from_the_wrong_cell():
    """Half the neurons read from their own cell (anywhere inside it, with their trained weights),
    half from another cell: the refit moves exactly the second half, to their cells, and leaves the
    first half's positions and weights as they were."""
    model, trials, cells, _, _ = linear_mouse("tiny")
    grid = grid_for(model.frame_shape)
    centres = cell_centres(model)
    cell_size = 2 / np.array([grid[1], grid[0]])  # (x, y) width of a cell in grid_sample units
    wrong = np.arange(len(cells)) % 2 == 1
    rng = np.random.default_rng(1)
    read_from = np.where(wrong, (cells + grid[1] * 3 + 5) % (grid[0] * grid[1]), cells)
    start = centres[read_from] + rng.uniform(-0.4, 0.4, (len(cells), 2)) * cell_size  # off the centre, in the cell
    readout = model.heads["mouse"].readout
    with torch.no_grad():
        readout.position.copy_(torch.from_numpy(start))
        readout.weight.normal_()
    before = readout.weight.detach().clone()

    moved = refit_readout(model, "mouse", trials)

    assert moved.tolist() == wrong.tolist()
    position = readout.position.detach().numpy()
    assert np.allclose(position[wrong], centres[cells[wrong]])
    assert np.allclose(position[~wrong], start[~wrong].astype(np.float32))
    torch.testing.assert_close(readout.weight[:, ~wrong], before[:, ~wrong], rtol=0, atol=0)


def test_the_retinotopy_of_the_well_placed_readouts_finds_the_lost_ones_and_only_where_there_is_one():
    """Positions that follow an affine map of the cortical coordinates with 1% scatter, except some
    weak neurons whose readouts wandered off: those, and only those, are lost, and the map puts them
    back near where they belong. Strong neurons off the map, and every neuron of a mouse whose
    coordinates say nothing about its positions, stay where they are."""
    rng = np.random.default_rng(0)
    coordinates = rng.uniform(0, 500, (400, 3))
    truth = (coordinates[:, :2] - 250) / 300  # a retinotopic map, in grid_sample units
    position = truth + rng.normal(0, 0.01, truth.shape)
    strength = rng.uniform(0, 1, 400)
    weak = strength < np.median(strength)
    wandered = np.zeros(400, bool)
    wandered[np.flatnonzero(weak)[:40]] = True
    strong_off_map = np.flatnonzero(~weak)[:5]
    position[wandered] = rng.uniform(-1, 1, (40, 2))
    position[wandered] += np.sign(position[wandered] - truth[wandered]) * 0.3  # at least 0.3 off the map
    position[strong_off_map] += 0.5

    fitted, lost = lost_neurons(position, coordinates, strength)

    assert lost.tolist() == wandered.tolist()
    assert np.abs(fitted[lost] - np.clip(truth[lost], -1, 1)).max() < 0.05
    unrelated = rng.permutation(coordinates)  # no retinotopy: the map explains nothing
    assert not lost_neurons(position, unrelated, strength)[1].any()


def test_a_lost_readout_goes_as_far_beyond_the_screen_as_the_cores_maps_reach():
    """A map whose receptive fields reach past the screen's edge: a lost neuron goes to the map's
    position, clipped to the screen without a margin and to the maps' reach with one."""
    rng = np.random.default_rng(1)
    coordinates = rng.uniform(0, 500, (200, 2))
    coordinates[0] = np.array([1.3, -1.35]) * 180 + 250  # its RF beyond the screen's right and top edges
    truth = (coordinates - 250) / 180  # up to ±1.39
    position, strength = truth.copy(), rng.uniform(0.5, 1, 200)
    position[0], strength[0] = -truth[0], 0.0  # lost: the mirror image of where it belongs
    reach = 1 / screen_share(1, 11, 18)  # small's maps of a 36 × 64 screen with a margin of one cell
    for limit in (np.ones(2), reach):
        fitted, lost = lost_neurons(position, coordinates, strength, limit)
        assert lost.tolist() == [True] + [False] * 199
        assert np.allclose(fitted[0], np.clip(truth[0], -limit, limit), atol=1e-3)
    assert np.allclose(reach, [18 / 16, 11 / 9])


def test_a_refit_with_coordinates_puts_a_lost_readout_where_the_retinotopy_of_the_others_says():
    """The linear mouse's neurons all read from their own cells but one, which reads from a cell that
    explains none of its variance; its cortical coordinates follow the others' map: the refit given
    the coordinates moves it there (and without coordinates, only by the cell fits)."""
    model, trials, cells, _, _ = linear_mouse("tiny", neurons=24)
    centres = cell_centres(model)
    coordinates = np.column_stack([centres[cells] * 300 + 250, np.zeros(len(cells))])  # an exact affine map
    readout = model.heads["mouse"].readout
    with torch.no_grad():
        readout.position.copy_(torch.from_numpy(centres[cells]))
        readout.position[0] = -readout.position[0]  # the lost one: the mirror image of its cell
    moved = refit_readout(model, "mouse", trials, min_gain=2.0, coordinates=coordinates)  # no move by cell gains
    assert moved.tolist() == [True] + [False] * 23
    assert np.allclose(readout.position[0].detach().numpy(), centres[cells[0]], atol=1e-5)


def test_the_cell_fits_of_a_core_with_a_margin_pool_only_the_screen():
    """A core whose maps reach beyond the screen (`margin`) pools the same cells as the same core without."""
    model, trials, _, _, _ = linear_mouse("tiny")
    wide = Twin({**PRESETS["tiny"].model_config(), "margin": 1}, {"mouse": 12}).eval()
    wide.load_state_dict(model.state_dict())
    grid = grid_for(model.frame_shape)
    with torch.no_grad():
        (wide_cells, wide_reach), (cells, reach) = (_cell_features(twin, "mouse", trials[0], grid)
                                                    for twin in (wide, model))
    torch.testing.assert_close(wide_cells, cells)
    assert (reach == 1).all() and (wide_reach > 1).all()
