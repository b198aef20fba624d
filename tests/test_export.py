"""ONNX export: parity with PyTorch, BatchNorm folded, manifest checksums."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from twinserve.cli import main as twin
from twinserve.contract import CLIP_INPUTS, RESPONSES, state_names
from twinserve.export.manifest import ArtifactError, read_manifest, verified_path, verify_all
from twinserve.export.onnx_export import (PARITY_TOLERANCE, clip_parity, cpu_session, export_clip, export_run,
                                          export_step, op_counts, relative_error, step_parity, stream)
from twinserve.training.data import Recording
from twinserve.training.model import Twin
from twinserve.training.presets import preset


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts):
    return tiny_artifacts


def test_manifest_describes_every_graph(artifacts, default_mouse):
    out, manifest = artifacts
    assert manifest.to_dict() == json.loads((out / "manifest.json").read_text())
    assert manifest == read_manifest(out)
    assert set(manifest.recordings) == {r.name for r in default_mouse}
    hashed = {out / g.file for r in manifest.recordings.values() for g in r.graphs.values()}
    assert {p for p in out.rglob("*") if p.is_file()} == hashed | {out / "manifest.json"}  # nothing unhashed
    for recording in default_mouse:
        entry = manifest.recordings[recording.name]
        assert entry.unit_ids == Recording(recording).unit_ids.tolist()
        clip = entry.graphs["clip"]
        assert [i.name for i in clip.inputs] == list(CLIP_INPUTS)
        assert clip.outputs[0].name == RESPONSES and clip.outputs[0].shape[2] == entry.neurons
        assert clip.inputs[0].shape[2:] == manifest.frame_shape == list(Recording(recording).frame_shape)
        counts = clip.details["op_counts"]
        assert counts.get("BatchNormalization", 0) == 0 and counts["Conv"] == 4
        assert max(clip.parity.values()) < PARITY_TOLERANCE
        layers = {k: v for k, v in clip.details["op_counts_per_layer"].items() if k.startswith("layer")}
        assert layers == {"layer0": {"Conv": 2, "Elu": 1}, "layer1": {"Conv": 2, "Elu": 1}}
    assert manifest.receptive_field == 5 and manifest.offset == 4 and manifest.opset == 23
    assert manifest.core == "factorized" and manifest.attention is None


@pytest.mark.parametrize("batch, frames", [(1, 300), (4, 300), (1, 60), (4, 60)])
def test_clip_graph_matches_pytorch_on_virtual_mouse_trials(artifacts, tiny_run, default_mouse, batch, frames):
    from twinserve.training.checkpoint import load_run

    out, _ = artifacts
    model, _ = load_run(tiny_run[0])
    recording = Recording(default_mouse[1])
    trials = [t for t in recording.load("oracle") if t.frames >= frames][:batch]
    inputs = [np.stack([getattr(t, k)[:frames] for t in trials]) for k in ("video", "behavior", "pupil_center")]
    session = onnxruntime.InferenceSession(str(verified_path(out, recording.name, "clip")))
    actual = session.run(None, dict(zip(CLIP_INPUTS, inputs)))[0]
    with torch.no_grad():
        reference = model(recording.name, *map(torch.from_numpy, inputs)).numpy()
    assert actual.shape == (batch, frames - 4, recording.neurons)
    assert relative_error(actual, reference) < PARITY_TOLERANCE


def test_tampered_or_missing_artifacts_are_refused(artifacts, tmp_path):
    out, manifest = artifacts
    verify_all(out)
    name = next(iter(manifest.recordings))
    copy = tmp_path / "copy"
    (copy / name).mkdir(parents=True)
    manifest.write(copy)
    data = bytearray((out / name / "clip.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name / "clip.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{name}/clip.onnx: sha256 .* does not match"):
        verify_all(copy)
    (copy / name / "clip.onnx").write_bytes((out / name / "clip.onnx").read_bytes())
    (copy / name / "clip.onnx.data").write_bytes(b"weights no hash covers")  # as older exporters wrote them
    with pytest.raises(ArtifactError, match="clip.onnx.data, which the manifest's sha256 does not cover"):
        verified_path(copy, name, "clip")
    (copy / name / "clip.onnx").unlink()
    with pytest.raises(ArtifactError, match="clip.onnx: missing"):
        verified_path(copy, name, "clip")
    with pytest.raises(ArtifactError, match="no recording 'nobody' in the manifest"):
        verified_path(out, "nobody", "clip")
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        verify_all(tmp_path)


def test_export_cli(tiny_run, tmp_path, capsys):
    assert twin(["export", "--run", str(tiny_run[0]), "--out", str(tmp_path / "a")]) == 0
    assert "BatchNormalization: 0" in capsys.readouterr().err  # prose on stderr, the JSON summary on stdout
    verify_all(tmp_path / "a")
    assert twin(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]) == 2


def test_step_graph_streamed_over_a_virtual_mouse_trial_equals_the_clip_graph(artifacts, default_mouse):
    out, manifest = artifacts
    recording = Recording(default_mouse[0])
    step = manifest.graph(recording.name, "step")
    state_inputs = step.states
    state_outputs = [o for o in step.outputs if o.name.startswith("state_")]
    assert [i.name for i in state_inputs] == state_names(len(state_inputs))[0] == sorted(i.name for i in state_inputs)
    assert [o.name for o in state_outputs] == state_names(len(state_inputs))[1] == sorted(o.name for o in state_outputs)
    assert [i.fixed_shape for i in state_inputs] == [o.fixed_shape for o in state_outputs]
    assert step.details["op_counts"].get("BatchNormalization", 0) == 0
    for layer in ("layer0", "layer1"):  # spatial conv on the new frame, temporal conv as one MatMul
        counts = step.details["op_counts_per_layer"][layer]
        assert counts["Conv"] == 1 and counts["MatMul"] == 1 and "BatchNormalization" not in counts
    assert max(step.parity.values()) < PARITY_TOLERANCE and step.details["warmup_frames"] == 4
    trials = [t for t in recording.load("oracle") if t.frames == 300][:4]
    inputs = [np.stack([getattr(t, k) for t in trials]) for k in ("video", "behavior", "pupil_center")]
    clip = onnxruntime.InferenceSession(str(verified_path(out, recording.name, "clip")))
    reference = clip.run(None, dict(zip(CLIP_INPUTS, inputs)))[0]
    session = onnxruntime.InferenceSession(str(verified_path(out, recording.name, "step")))
    streamed = stream(session, *inputs, [i.fixed_shape for i in state_inputs])
    assert streamed.shape == (4, 300, recording.neurons)
    assert relative_error(streamed[:, manifest.offset:], reference) < PARITY_TOLERANCE


# small strides in two layers and reads them beside the first layer's maps (`factorized.FineMaps`), or without
# them; pooled maps (`factorized.PooledMaps`) add blurred copies for the readout
@pytest.mark.parametrize("name, extra", [("base", {}), ("small", {}), ("small", {"fine": False}),
                                         ("small", {"pooled": (1.5,)})])
def test_a_larger_preset_exports_with_batchnorm_folded_and_streams_like_its_clip_graph(tmp_path, name, extra):
    torch.manual_seed(1)
    model = Twin({**preset(name).model_config(), **extra}, {"m": 32}).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to fold
        for layer in model.core.layers:
            layer.norm.running_mean.normal_(0, 0.5)
            layer.norm.running_var.uniform_(0.5, 2.0)
    export_clip(model, "m", tmp_path / "clip.onnx")
    assert "BatchNormalization" not in op_counts(tmp_path / "clip.onnx")
    assert max(clip_parity(model, "m", tmp_path / "clip.onnx", cases=((1, 30), (4, 20))).values()) < PARITY_TOLERANCE
    graph = export_step(model, "m", tmp_path / "step.onnx")
    assert state_names(3) == (["state_0", "state_1", "state_2"], ["state_0_next", "state_1_next", "state_2_next"])
    errors = step_parity(cpu_session(tmp_path / "clip.onnx"), cpu_session(tmp_path / "step.onnx"), graph.state_shapes(),
                         model.offset, model.frame_shape, cases=((1, 40), (4, 25)))
    assert max(errors.values()) < PARITY_TOLERANCE


@pytest.mark.parametrize("margin", [0, 1])
def test_a_twin_exports_at_its_own_frame_shape(tmp_path, margin):
    from twinserve.export.onnx_export import export_twin

    torch.manual_seed(0)
    model = Twin({**preset("tiny").model_config(), "margin": margin}, {"m": 9}, frame_shape=(24, 40)).eval()
    with torch.no_grad():
        model.heads["m"].readout.position.uniform_(-1.2, 1.2)  # with a margin, some read beyond the screen
    manifest = export_twin(model, "tiny", {"m": {"neurons": 9, "unit_ids": list(range(9))}}, tmp_path)
    assert manifest.frame_shape == [24, 40] and manifest == read_manifest(tmp_path)
    assert manifest.graph("m", "clip").input(CLIP_INPUTS[0]).shape == ["batch", "time", 24, 40]
    assert all(max(g.parity.values()) < PARITY_TOLERANCE for g in manifest.recordings["m"].graphs.values())


@pytest.mark.parametrize("margin, offset", [(0, (0.0, 0.0)), (1, (0.0, 0.0)), (0, (3 / 64, 3 / 36)), (1, (1 / 64, 1 / 36))])
def test_gather_readout_equals_the_gaussian_readout_everywhere_on_the_map(margin, offset):
    from twinserve.export.readout import GatherReadout
    from twinserve.training.model import GaussianReadout

    torch.manual_seed(2)
    readout = GaussianReadout(channels=6, neurons=203, margin=margin, offset=offset).eval()
    with torch.no_grad():
        readout.weight.normal_()
        readout.bias.normal_()
        readout.position.uniform_(-1.4, 1.4)  # beyond the screen: its margin, and beyond the map: border padding
        readout.position[:4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])  # corners, centre
    features, shift = torch.randn(3, 6, 5, 9, 16), torch.randn(3, 5, 2) * 0.3
    gathered = GatherReadout(readout, chunk=50)  # several chunks, the last one partial
    with torch.no_grad():
        expected, actual = readout(features, shift), gathered(features, shift)
    assert actual.shape == (3, 5, 203)
    assert relative_error(actual.numpy(), expected.numpy()) < 1e-5


def test_tensorrt_export_stops_cleanly_where_tensorrt_or_a_gpu_is_missing(tiny_run, tmp_path, capsys):
    from twinserve.export.tensorrt import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable:
        code = twin(["export", "--run", str(tiny_run[0]), "--out", str(tmp_path / "a"), "--format", "tensorrt"])
        assert code == 3 and "TensorRT" in capsys.readouterr().err
        assert not (tmp_path / "a").exists()  # nothing written
    else:
        pytest.skip("TensorRT and a GPU are here: test_tensorrt_engines_match_the_onnx_graphs covers it")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engines_match_the_onnx_graphs(tiny_run, tmp_path, precision):
    from twinserve.export.tensorrt import TOLERANCES, TensorRTUnavailable, export_engines, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable as error:
        pytest.skip(str(error))
    export_run(tiny_run[0], tmp_path)
    manifest = export_engines(tmp_path, precision)
    assert manifest == read_manifest(tmp_path)
    for entry in manifest.recordings.values():
        for kind in ("clip", "step"):
            engine = entry.graphs[f"{kind}_tensorrt_{precision}"]
            assert max(engine.parity.values()) < TOLERANCES[precision] and engine.details["precision"] == precision
    verify_all(tmp_path)
