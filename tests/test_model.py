"""The twin's shapes, causality and normalisation; the core registry and the presets."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from twinserve.contract import DEFAULT_FRAME_SHAPE
from twinserve.training.cores import CORES, build_core, register_core
from twinserve.training.model import Twin, translate
from twinserve.training.presets import PRESETS, preset, register_preset


def make_twin(name="tiny", neurons=None):
    torch.manual_seed(0)
    model = Twin(preset(name).model_config(), neurons or {"a": 7, "b": 11})
    with torch.no_grad():  # non-trivial readouts, shifter and modulator so every path carries signal
        for head in model.heads.values():
            head.readout.position.uniform_(-0.8, 0.8)
            head.readout.weight.normal_()
            head.modulator.weight.normal_(0, 0.3)
            head.shifter[2].weight.normal_(0, 0.3)
    return model.eval()


def inputs(frames=30, batch=2, seed=0, frame_shape=DEFAULT_FRAME_SHAPE):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, frames, *frame_shape, generator=g) * 255, torch.randn(batch, frames, 2, generator=g),
            torch.randn(batch, frames, 2, generator=g))


@pytest.mark.parametrize("name, receptive_field", [("tiny", 5), ("small", 19), ("base", 19)])
def test_shapes_and_receptive_field(name, receptive_field):
    model = make_twin(name)
    assert model.receptive_field == receptive_field and model.offset == receptive_field - 1
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
    first_affected = t - model.offset  # output j predicts input frame j + offset (R - 1)
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


def test_the_shift_is_zero_at_the_mean_pupil_position_and_only_there():
    """A centred shifter leaves every readout where it is at the recording's mean pupil position (where
    in-silico experiments put the eye); a shifter without centring moves them all by its output there."""
    centred = make_twin("tiny")
    absolute = Twin({**preset("tiny").model_config(), "centred_shift": False}, {"a": 7, "b": 11}).eval()
    absolute.load_state_dict(centred.state_dict())
    still = copy.deepcopy(centred)
    for model in (centred, absolute, still):
        model.heads["a"].pupil_mean.copy_(torch.tensor([150.0, 120.0]))
    with torch.no_grad():
        still.heads["a"].shifter[2].weight.zero_()  # its output: tanh(0) = 0, no shift at any pupil position
    video, behavior, _ = inputs(frames=20)
    at_mean, away = torch.tensor([150.0, 120.0]).expand(2, 20, 2), torch.tensor([153.0, 118.0]).expand(2, 20, 2)
    with torch.no_grad():
        unshifted = still("a", video, behavior, at_mean)
        torch.testing.assert_close(centred("a", video, behavior, at_mean), unshifted, rtol=0, atol=1e-6)
        assert (absolute("a", video, behavior, at_mean) - unshifted).abs().max() > 1e-3
        assert (centred("a", video, behavior, away) - still("a", video, behavior, away)).abs().max() > 1e-3


def test_translate_moves_each_frame_by_its_own_shift():
    """Whole-pixel shifts move a frame exactly, up to the float32 rounding of the sampling positions
    (2 / 36 per row is not a binary fraction: ~1e-5 of a pixel); what comes from beyond the frame is 0."""
    video = torch.randn(2, 3, 36, 64, generator=torch.Generator().manual_seed(0))
    columns, rows = torch.tensor([[3, -5, 0], [0, 7, -2]]), torch.tensor([[2, 0, -4], [0, 1, 3]])
    shift = torch.stack([2 * columns / 64, 2 * rows / 36], -1).float()
    moved = translate(video, shift)
    for b in range(2):
        for t in range(3):
            dx, dy = int(columns[b, t]), int(rows[b, t])
            expected = torch.zeros(36, 64)
            ys, xs = slice(max(0, -dy), min(36, 36 - dy)), slice(max(0, -dx), min(64, 64 - dx))
            expected[ys, xs] = video[b, t, max(0, dy):min(36, 36 + dy), max(0, dx):min(64, 64 + dx)]
            torch.testing.assert_close(moved[b, t], expected, atol=1e-4, rtol=0)


def test_a_head_that_shifts_its_input_sees_the_moved_screen():
    """With `shift_input` (today's default) an eye away from its mean position is the same as the
    screen moved by the shifter's output and the eye at its mean: the readouts do not move."""
    model = make_twin("tiny")
    head = model.heads["a"]
    assert head.shift_input and model.config["shift_input"]
    head.pupil_mean.copy_(torch.tensor([150.0, 120.0]))
    video, behavior, _ = inputs(frames=20)
    at_mean = torch.tensor([150.0, 120.0]).expand(2, 20, 2)
    away = at_mean + torch.randn(2, 20, 2, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        shift = head.eye_shift(head.normalize(video, behavior, away)[2])
        assert shift.abs().min() > 1e-3
        moved = translate(video, shift)  # the head's normalisation of the video is the identity here
        torch.testing.assert_close(model("a", video, behavior, away), model("a", moved, behavior, at_mean))


def test_bad_requests_are_refused():
    model = make_twin("tiny")
    with pytest.raises(KeyError, match="unknown recording 'c'"):
        model("c", *inputs())
    with pytest.raises(ValueError, match="at least 5 frames"):
        model("a", *inputs(frames=3))


class RunningMean(nn.Module):
    """Unbounded memory: a 1×1 mix averaged over all frames so far; (B, C_in, T, H, W) → (B, 4, T, H, W)."""

    receptive_field, out_channels = None, 4

    def __init__(self, in_channels, frame_shape):
        super().__init__()
        self.mix = nn.Conv3d(in_channels, self.out_channels, 1)

    def forward(self, x):
        return self.mix(x).cumsum(2) / torch.arange(1, x.shape[2] + 1).reshape(1, 1, -1, 1, 1)


def test_a_core_with_unbounded_memory_answers_every_frame(monkeypatch):
    monkeypatch.setitem(CORES, "running-mean", RunningMean)
    model = Twin({"core": "running-mean"}, {"a": 3}).eval()
    assert model.receptive_field is None and model.offset == 0
    video, behavior, pupil = inputs(frames=7)
    with torch.no_grad():
        out = model("a", video, behavior, pupil)
        first = model("a", video[:, :1], behavior[:, :1], pupil[:, :1])
    assert out.shape == (2, 7, 3)
    torch.testing.assert_close(first[:, 0], out[:, 0])


def test_the_registries_refuse_unknown_and_duplicate_names():
    with pytest.raises(ValueError, match=r"unknown core 'nope'; known cores: \['factorized', 'fnn', 'gru', 'transformer'"):
        build_core("nope", 3, DEFAULT_FRAME_SHAPE)
    with pytest.raises(ValueError, match="already registered"):
        register_core("factorized", RunningMean)
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; choose one of \["):
        preset("nope")
    with pytest.raises(ValueError, match="already exists"):
        register_preset("tiny", PRESETS["small"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_twin_and_names_its_core(name):
    model = Twin(preset(name).model_config(), {"a": 3})
    assert model.config["core"] == preset(name).core in CORES
    assert preset(name).train.frames > model.offset


def test_a_twin_takes_the_frame_shape_it_is_given():
    for name in ("tiny", "vit-tiny"):
        torch.manual_seed(0)
        model = Twin(preset(name).model_config(), {"a": 3}, frame_shape=(24, 40)).eval()
        with torch.no_grad():
            out = model("a", *inputs(frames=model.offset + 2, frame_shape=(24, 40)))
        assert out.shape == (2, 2, 3) and model.frame_shape == (24, 40)
        assert model.step_flops() < model.clip_flops(model.offset + 2)


def test_factorized_strides_per_layer_and_runs_written_with_a_first_stride_only():
    from twinserve.training.factorized import FactorizedCore

    layers = dict(channels=(4, 4, 4), spatial_kernels=(3, 3, 3), temporal_kernels=(2, 2, 2))
    x = torch.zeros(1, 3, 4, 36, 64)
    assert FactorizedCore(3, (36, 64), **layers, strides=(2, 2, 1))(x).shape == (1, 4, 1, 9, 16)
    assert FactorizedCore(3, (36, 64), **layers, first_stride=2)(x).shape == (1, 4, 1, 18, 32)  # an older run's config
    for wrong in (dict(strides=(2, 2)), dict(strides=(2, 2, 1), first_stride=2)):
        with pytest.raises(ValueError, match="one spatial stride per layer"):
            FactorizedCore(3, (36, 64), **layers, **wrong)


@pytest.mark.parametrize("dilation", [2, (1, 2)])
def test_a_dilated_factorized_layer_reaches_further_with_the_same_maps_and_streams_as_its_clip(dilation):
    """Dilation 2 on the last 3×3 layer (all its channels, or the second half as a branch beside an
    undilated one): same output cells, the reach of a 5×5 layer (a pixel 10 px from a cell moves the
    dilated channels only: reach ±11 px against ±7), and the streamed step equals the clip."""
    from twinserve.training.factorized import FactorizedCore

    layers = dict(channels=(4, 4, 4), spatial_kernels=(3, 3, 3), temporal_kernels=(2, 2, 2), strides=(2, 2, 1), margin=1)
    torch.manual_seed(0)
    plain = FactorizedCore(3, (36, 64), **layers).eval()
    dilated = FactorizedCore(3, (36, 64), **layers, dilations=(1, 1, dilation)).eval()
    for core in (plain, dilated):  # the temporal conv would mix the channels that moved into all of them
        core.layers[-1].temporal.weight.data.zero_()[:, :, -1, 0, 0] = torch.eye(4)
    x = torch.randn(1, 3, 4, 36, 64)
    far = x.clone()
    far[..., 16, 42] += 10.0  # cell (5, 9) of the last maps (1 margin cell) sits on pixel (16, 32): 10 px away
    with torch.no_grad():
        outputs = {name: (core(x), core(far)) for name, core in (("plain", plain), ("dilated", dilated))}
        assert outputs["plain"][0].shape == outputs["dilated"][0].shape == (1, 4, 1, 11, 18)
        moved = {name: (b - a)[0, :, 0, 5, 9].abs() > 1e-5 for name, (a, b) in outputs.items()}
        assert moved["plain"].tolist() == [False] * 4
        assert moved["dilated"].tolist() == ([True] * 4 if dilation == 2 else [False, False, True, True])
        step, states = dilated.stepper(), [torch.zeros(1, *shape) for shape in dilated.state_shapes((36, 64))]
        for t in range(x.shape[2]):
            streamed, *states = step(x[:, :, t], *states)
    torch.testing.assert_close(streamed, outputs["dilated"][0][:, :, -1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="dilation"):
        FactorizedCore(3, (36, 64), **layers, dilations=(1, 2))
    with pytest.raises(ValueError, match="split evenly"):
        FactorizedCore(3, (36, 64), **layers, dilations=(1, 1, (1, 2, 3)))


def _clip_streamed_frame_by_frame(core) -> torch.Tensor:
    """A factorized core's clip output for 5 random frames of 3 channels (1, C, 2, H', W'), after checking
    that its step, fed the frames one by one from zero states, gives the same last 2 frames."""
    x = torch.randn(1, 3, 5, 36, 64)
    step, states = core.stepper(), [torch.zeros(1, *shape) for shape in core.state_shapes((36, 64))]
    with torch.no_grad():
        clip = core(x)
        streamed = []
        for t in range(x.shape[2]):
            out, *states = step(x[:, :, t], *states)
            streamed.append(out)
    torch.testing.assert_close(torch.stack(streamed[-2:], dim=2), clip, rtol=1e-4, atol=1e-5)
    return clip


def test_pooled_maps_sit_beside_the_maps_keep_a_constant_and_stream_as_their_clip():
    """`pooled=(σ, ...)`: the last maps first, then one Gaussian blur of them per σ. A constant map stays
    constant (edges included, the blur is normalised), a point spreads to its neighbours and keeps its
    mass in the interior, and the streamed step equals the clip."""
    from twinserve.training.factorized import FactorizedCore, PooledMaps

    pool = PooledMaps((1.0, 2.5))
    constant = torch.full((1, 2, 3, 9, 16), 0.7)
    torch.testing.assert_close(pool(constant), torch.full((1, 6, 3, 9, 16), 0.7))
    point = torch.zeros(1, 1, 9, 16)
    point[0, 0, 4, 8] = 1.0
    blurred = pool(point)
    assert blurred.shape == (1, 3, 9, 16) and torch.equal(blurred[:, 0], point[:, 0])
    assert blurred[0, 1, 4, 9] > 0.05 and blurred[0, 2, 4, 11] > blurred[0, 1, 4, 11]  # wider σ reaches further
    # σ = 1 keeps the point's mass (a little more: the taps near the edge are divided by a partial sum)
    torch.testing.assert_close(blurred[0, 1].sum(), torch.tensor(1.0), rtol=0, atol=0.01)
    with pytest.raises(ValueError, match="blur widths"):
        PooledMaps((0.0,))

    layers = dict(channels=(4, 4, 4), spatial_kernels=(3, 3, 3), temporal_kernels=(2, 2, 2), strides=(2, 2, 1))
    torch.manual_seed(0)
    core = FactorizedCore(3, (36, 64), **layers, pooled=(1.5,)).eval()
    assert core.out_channels == 8 and core.step_flops((36, 64)) > FactorizedCore(3, (36, 64), **layers).step_flops((36, 64))
    assert _clip_streamed_frame_by_frame(core).shape == (1, 8, 2, 9, 16)


def test_fine_maps_put_the_last_maps_on_the_first_layers_cells_beside_them_and_stream_as_their_clip():
    """`fine=True`: the readout reads the last maps interpolated onto the first layer's finer cells (last
    cell i on first cell factor·i, linear between, held past the end) beside the first layer's maps,
    cut to the last maps' frames; its cells are the first layer's; the streamed step equals the clip."""
    from twinserve.training.factorized import FactorizedCore, FineMaps

    columns = torch.arange(16.0).expand(1, 1, 9, 16)  # (B, C, h, w): each cell holds its column
    up = FineMaps(2)(columns, torch.zeros(1, 3, 18, 32))
    assert up.shape == (1, 4, 18, 32) and torch.equal(up[:, 1:], torch.zeros(1, 3, 18, 32))
    torch.testing.assert_close(up[0, 0, 5], (torch.arange(32.0) / 2).clamp(max=15))
    clip_fine = torch.arange(5.0)[None, None, :, None, None].expand(1, 2, 5, 18, 32)  # frame t holds t
    joined = FineMaps(2)(torch.zeros(1, 1, 2, 9, 16), clip_fine)
    assert torch.equal(joined[0, 1, :, 0, 0], torch.tensor([3.0, 4.0]))  # the newest frames of the first maps

    layers = dict(channels=(4, 6, 6), spatial_kernels=(3, 3, 3), temporal_kernels=(2, 2, 2), strides=(2, 2, 1))
    with pytest.raises(ValueError, match="fine maps"):
        FactorizedCore(3, (36, 64), **layers, fine=True, margin=1)
    torch.manual_seed(0)
    core = FactorizedCore(3, (36, 64), **layers, fine=True).eval()
    assert core.out_channels == 10 and core.cell_stride == 2
    assert core.step_flops((36, 64)) > FactorizedCore(3, (36, 64), **layers).step_flops((36, 64))
    assert _clip_streamed_frame_by_frame(core).shape == (1, 10, 2, 18, 32)


def test_the_factorized_cores_channels_last_input_changes_no_output_or_gradient():
    """The CPU layout of the core's input is a speed choice: outputs and weight gradients agree with
    the default layout's to float32 rounding, in training and in eval mode."""
    from twinserve.training.factorized import FactorizedCore

    torch.manual_seed(0)
    fast = FactorizedCore(3, (36, 64), **PRESETS["small"].model)
    plain = copy.deepcopy(fast)
    plain.channels_last = False
    x = torch.randn(2, 3, 24, 36, 64)
    layouts = []  # whether the first conv's input is channels-last (its output's layout is oneDNN's choice)
    for core in (fast, plain):
        core.layers[0].spatial.register_forward_pre_hook(
            lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)))
    for mode in (True, False):
        outputs, gradients = [], []
        for core in (fast, plain):
            core.train(mode).zero_grad()
            out = core(x)
            out.square().mean().backward()
            outputs.append(out)
            gradients.append(torch.cat([p.grad.flatten() for p in core.parameters()]))
        assert layouts[-2:] == [True, False]
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("strides", [(2, 2, 1), (2, 1, 2)])
def test_a_factorized_margin_adds_feature_cells_beyond_every_edge_of_the_screen(strides):
    from twinserve.training.factorized import FactorizedCore

    layers = dict(channels=(4, 4, 4), spatial_kernels=(3, 3, 3), temporal_kernels=(2, 2, 2), strides=strides)
    torch.manual_seed(0)
    plain = FactorizedCore(3, (36, 64), **layers).eval()
    wide = FactorizedCore(3, (36, 64), **layers, margin=2).eval()
    wide.load_state_dict(plain.state_dict())  # same weights: the margin only pads the last layer more
    x = torch.randn(1, 3, 4, 36, 64)
    with torch.no_grad():
        inner, outer = plain(x), wide(x)
    assert inner.shape == (1, 4, 1, 9, 16) and outer.shape == (1, 4, 1, 13, 20)
    # Every cell over the screen is the same with and without the margin: the margin only adds cells around them.
    torch.testing.assert_close(outer[..., 2:-2, 2:-2], inner)
    with pytest.raises(ValueError, match="margin"):
        FactorizedCore(3, (36, 64), **layers, margin=-1)


def test_a_readout_with_a_margin_reads_the_screen_as_before_and_beyond_it_the_margin():
    from twinserve.training.model import GaussianReadout

    torch.manual_seed(1)
    plain, wide = GaussianReadout(5, 40).eval(), GaussianReadout(5, 40, margin=1).eval()
    with torch.no_grad():
        plain.weight.normal_()
        plain.position.uniform_(-0.88, 0.88)  # between the centres of the screen's outer cells
    wide.load_state_dict(plain.state_dict())
    canvas = torch.randn(2, 5, 3, 11, 18)  # a 9 × 16 screen's maps with one cell beyond each edge
    shift = torch.zeros(2, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(wide(canvas, shift), plain(canvas[..., 1:-1, 1:-1], shift))
        # The centre of the cell left of the screen's first column, in screen coordinates: -1 - 1/16.
        wide.position[0] = torch.tensor([-1 - 1 / 16, 0.0])
        beyond = wide(canvas, shift)[..., 0]
        expected = (canvas[:, :, :, 5, 0].transpose(1, 2) * wide.weight[:, 0]).sum(-1) + wide.bias[0]
        torch.testing.assert_close(beyond, expected)
        wide.position[0] = torch.tensor([-5.0, 0.0])  # far beyond the margin: clamped to the map's edge
        torch.testing.assert_close(wide(canvas, shift)[..., 0], expected)


@pytest.mark.parametrize("name", ["small", "gru-small", "fnn-small"])
def test_a_readout_reads_the_cell_centred_where_its_position_is_on_the_screen(name):
    """Constant weights make every conv kernel symmetric, so the input pixels a neuron's output depends on
    centre on the cell it reads: at its position (within 0.1 px), where grid_sample's convention alone put
    it (S - 1) / 2 pixels off for a map S times coarser than the frame (runs written before `cell_centres`)."""
    from twinserve.training.cores import cell_offset
    from twinserve.training.positions import pixel_positions

    height, width = DEFAULT_FRAME_SHAPE
    pixel = np.array([30.0, 18.0])  # x, y: between cells of maps 2 or 4 times coarser than the frame
    centroids = {}
    for centred in (True, False):
        model = Twin({**preset(name).model_config(), "cell_centres": centred}, {"a": 1}).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(0.01)
            position = (pixel + 0.5) / np.array([width, height]) * 2 - 1
            model.heads["a"].readout.position[0] = torch.from_numpy(position)
        np.testing.assert_allclose(pixel_positions(position[None], DEFAULT_FRAME_SHAPE)[0], pixel)
        video, behavior, _ = inputs(frames=model.offset + 2, batch=1)
        video.requires_grad_(True)
        model("a", video, behavior, torch.zeros_like(behavior))[0, -1, 0].backward()  # the mean eye: no shift
        weight = video.grad[0].abs().sum(0).double().numpy()  # (H, W)
        rows, cols = np.mgrid[0:height, 0:width]
        centroids[centred] = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
    stride = model.core.cell_stride
    assert stride > 1
    np.testing.assert_allclose(centroids[True], pixel, atol=0.1)
    np.testing.assert_allclose(centroids[False], pixel - (stride - 1) / 2, atol=0.1)
    np.testing.assert_allclose(cell_offset(model.core, DEFAULT_FRAME_SHAPE),
                               [(stride - 1) / width, (stride - 1) / height])
