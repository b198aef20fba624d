"""The transformer twin: causality and the attention window, its two attention forms, export parity
(PyTorch, clip graph, step graph with the key/value cache), training, and serving unchanged."""

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpc

from twinserve.cli import main as twin
from twinserve.clients.stream import StreamClient
from twinserve.contract import CLIP_INPUTS, RESPONSES, model_names
from twinserve.export.graphs import StepGraph
from twinserve.export.manifest import read_manifest
from twinserve.export.onnx_export import cpu_session, export_twin, random_inputs, relative_error, stream
from twinserve.serving.limits import Limits
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Ports, TritonServer
from twinserve.training.data import Recording
from twinserve.training.model import Twin
from twinserve.training.presets import preset
from twinserve.training.transformer import TemporalAttention, rotate, use_fused_attention


def _twin(name="vit-tiny", seed=0):
    torch.manual_seed(seed)
    model = Twin(preset(name).model_config(), {"m": 30}).eval()
    for parameter in model.heads["m"].modulator.parameters():  # zero at init: give behaviour a path too
        torch.nn.init.normal_(parameter, std=0.1)
    return model


def _predict(model, video, behavior, pupil):
    with torch.no_grad():
        return model("m", video, behavior, pupil)[0]


def test_a_frame_changes_no_earlier_prediction_and_nothing_beyond_the_receptive_field():
    model = _twin("vit-small")
    window, receptive_field = model.core.blocks[0].temporal.window, model.receptive_field
    assert receptive_field == 1 + 2 * (window - 1)
    video, behavior, pupil = map(torch.from_numpy, random_inputs(1, 60, model.frame_shape))
    before = _predict(model, video, behavior, pupil)
    changed = 40
    for tensor in (video, behavior):  # the frame and, separately, its behaviour
        altered = tensor.clone()
        altered[:, changed] += 50 if tensor is video else 3
        inputs = [altered if t is tensor else t for t in (video, behavior, pupil)]
        after = _predict(model, *inputs)
        # Output j predicts input frame j + offset, offset = R - 1.
        first = changed - model.offset
        assert torch.equal(after[:first], before[:first]), "a frame changed an earlier prediction"
        assert torch.equal(after[changed + 1:], before[changed + 1:]), "a frame reached beyond the receptive field"
        reached = (after[first:changed + 1] - before[first:changed + 1]).abs().amax(1) > 0
        # The newest frame matters most; its influence through deep windows may round away.
        assert reached[0] and reached.sum() >= window


def test_temporal_attention_is_causal_and_limited_to_its_window():
    torch.manual_seed(0)
    window = 5
    attention = TemporalAttention(dim=16, heads=2, window=window).eval()
    x = torch.randn(2, 30, 3, 16)
    with torch.no_grad():
        before = attention(x)  # output j sees input frames j … j + W - 1
        for frame in (10, 20):
            altered = x.clone()
            altered[:, frame] += 1
            after = attention(altered)
            touched = (after - before).abs().amax((0, 2, 3)) > 0
            assert touched.nonzero().flatten().tolist() == list(range(frame - window + 1, frame + 1))


def test_banded_unfolded_and_written_out_attention_agree():
    """The CPU path (a banded mask), the GPU path (unfolded windows, no mask: flash-eligible) and the
    written-out matrix products compute the same function."""
    torch.manual_seed(1)
    attention = TemporalAttention(dim=32, heads=4, window=6).eval()
    x = torch.randn(2, 25, 5, 32)
    with torch.no_grad():
        banded = attention(x)
        q, k, v = (t.permute(0, 2, 3, 1, 4).flatten(0, 1) for t in attention.project(x))
        angles = attention.angles(torch.arange(25))
        unfolded = attention._unfolded(rotate(q[:, :, 5:], angles[5:]), rotate(k, angles), v)
        unfolded = attention.out(unfolded.unflatten(0, (2, 5)).permute(0, 3, 1, 2, 4).flatten(3))
        use_fused_attention(attention, False)
        written_out = attention(x)
    assert torch.allclose(unfolded, banded, atol=1e-5)
    assert torch.allclose(written_out, banded, atol=1e-5)


def test_step_with_key_value_cache_equals_the_clip():
    model = _twin("vit-small")
    video, behavior, pupil = map(torch.from_numpy, random_inputs(2, 45, model.frame_shape))
    step = StepGraph(model, "m").eval()
    states = [torch.zeros(2, *shape) for shape in step.state_shapes()]
    assert len(states) == 2 * len(model.core.blocks)
    outputs = []
    with torch.no_grad():
        for t in range(45):
            responses, *states = step(video[:, t], behavior[:, t], pupil[:, t], *states)
            outputs.append(responses)
        clip = model("m", video, behavior, pupil)
    streamed = torch.stack(outputs, 1)[:, model.offset:]
    assert relative_error(streamed.numpy(), clip.numpy()) < 1e-5


@pytest.mark.parametrize("attention", ["fused", "decomposed"])
def test_export_parity_and_the_attention_operator(attention, tmp_path):
    model = _twin()
    manifest = export_twin(model, "vit-tiny", {"m": {"neurons": 30, "unit_ids": list(range(30))}}, tmp_path,
                           attention=attention)
    assert manifest.core == "transformer" and manifest.attention["form"] == attention
    assert manifest == read_manifest(tmp_path) and manifest.frame_shape == list(model.frame_shape)
    graphs = manifest.recordings["m"].graphs
    for name in ("clip", "step"):
        assert max(graphs[name].parity.values()) < 1e-4
        assert (graphs[name].details["op_counts"].get("Attention", 0) > 0) == (attention == "fused")
    # One spatial and one temporal attention per block, each a single node when fused.
    blocks = len(model.core.blocks)
    if attention == "fused":
        assert manifest.attention["attention_nodes"] == {"m/clip": 2 * blocks, "m/step": 2 * blocks}
    cache = model.core.cache_shape()
    assert graphs["step"].details["state_bytes_per_stream"] == 4 * 2 * blocks * int(np.prod(cache))
    assert graphs["step"].details["warmup_frames"] == model.offset
    # The clip graph against PyTorch on real-looking input: a smooth moving pattern, not noise.
    frames = np.arange(60)[:, None, None]
    rows, cols = np.mgrid[:model.frame_shape[0], :model.frame_shape[1]]
    video = (128 + 100 * np.sin(0.3 * cols[None] + 0.2 * rows[None] - 0.4 * frames)).astype(np.float32)[None]
    behavior = np.tile(np.float32([[5.0, 2.0]]), (1, 60, 1))
    pupil = np.zeros((1, 60, 2), np.float32)
    onnx = cpu_session(tmp_path / "m" / "clip.onnx").run(None, dict(zip(CLIP_INPUTS, (video, behavior, pupil))))[0]
    reference = _predict(model, *map(torch.from_numpy, (video, behavior, pupil))).numpy()
    assert relative_error(onnx[0], reference) < 1e-4


def test_vit_twin_trains_exports_and_serves_like_the_convolutional_one(mini_mouse, tmp_path):
    """The same commands and the same stream/clip models: `twin train --preset vit-tiny`, export, then
    streaming over gRPC equals the local step graph, and a clip scored in pieces the whole clip."""
    run, artifacts = tmp_path / "run", tmp_path / "artifacts"
    data = [str(p) for p in mini_mouse]
    assert twin(["train", "--data", *data, "--out", str(run), "--preset", "vit-tiny", "--steps", "20", "--quiet"]) == 0
    assert twin(["export", "--run", str(run), "--out", str(artifacts)]) == 0
    recording = mini_mouse[0].name
    trial = next(t for t in Recording(mini_mouse[0]).load("oracle") if t.frames >= 100)
    inputs = [a[:100] for a in (trial.video, trial.behavior, trial.pupil_center)]
    write_repository(artifacts, tmp_path / "repository", Limits(max_clip_frames=40))  # a 100-frame clip in 3 pieces
    with TritonServer(tmp_path / "repository", Ports.free()) as server:
        with StreamClient(server.url, model_names(recording)["stream"]) as client:
            streamed = np.stack(list(client.run(*inputs)))
        tensors = []
        for name, array in zip(CLIP_INPUTS, inputs):
            tensors.append(grpc.InferInput(name, [1, *array.shape], "FP32"))
            tensors[-1].set_data_from_numpy(array[None])
        scored = grpc.InferenceServerClient(server.url).infer(model_names(recording)["clip"], tensors)
    clip = cpu_session(artifacts / recording / "clip.onnx").run(
        None, dict(zip(CLIP_INPUTS, (a[None] for a in inputs))))[0]
    assert relative_error(scored.as_numpy(RESPONSES), clip) < 1e-5
    shapes = [spec.fixed_shape for spec in read_manifest(artifacts).graph(recording, "step").states]
    local = stream(cpu_session(artifacts / recording / "step.onnx"), *(a[None] for a in inputs), shapes)[0]
    assert relative_error(streamed, local) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_attention_runs_on_the_flash_kernel_on_a_gpu():
    """With only the FlashAttention backend allowed, PyTorch raises instead of falling back."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _twin("vit-small").cuda()
    inputs = [torch.from_numpy(a).cuda() for a in random_inputs(2, 40, model.frame_shape)]
    with torch.no_grad():
        reference = model("m", *inputs)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", torch.bfloat16):
            flash = model("m", *inputs)
    assert relative_error(flash.float().cpu().numpy(), reference.cpu().numpy()) < 5e-2
