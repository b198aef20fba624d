"""The recurrent cores (`training/gru.py`, `training/fnn.py`): causal, streamed steps equal the clip over a
300-frame trial in PyTorch and after export (ONNX Runtime), a tiny preset of each trains with `twin train`,
and a served GRU twin streams like its step graph and recovers after a server crash."""

import numpy as np
import pytest
import torch

from twinserve.cli import main as twin
from twinserve.contract import CLIP_INPUTS, model_names
from twinserve.export.onnx_export import cpu_session, export_run, export_twin, random_inputs, relative_error, stream
from twinserve.training.model import Twin
from twinserve.training.presets import preset

PRESETS = ("gru-tiny", "fnn-tiny")
TRIAL = 300


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: a recurrent core runs many tiny per-frame ops, which two threads run far
    slower on a busy 2-core machine (a 4,608-element tanh took 10 ms on two threads, 0.01 ms on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _twin(name: str, neurons: int = 12) -> Twin:
    """An untrained twin of preset `name` in eval mode, with raw-unit statistics that suit `random_inputs`,
    non-trivial BatchNorm statistics and readout positions spread over the map."""
    torch.manual_seed(0)
    model = Twin(preset(name).model_config(), {"m": neurons})
    head = model.heads["m"]
    with torch.no_grad():
        head.video_mean.fill_(128.0), head.video_std.fill_(64.0)
        head.behavior_mean.fill_(5.0), head.behavior_std.fill_(3.0), head.pupil_std.fill_(5.0)
        head.readout.position.uniform_(-0.8, 0.8)
        head.readout.weight.normal_(0, 1)
        for module in model.core.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("name", PRESETS)
def test_recurrent_core_is_causal_and_answers_every_frame(name):
    model = _twin(name)
    assert model.receptive_field is None and model.offset == 0
    video, behavior, pupil = map(torch.from_numpy, random_inputs(2, 40, model.frame_shape))
    with torch.no_grad():
        reference = model("m", video, behavior, pupil)
        for t in (0, 17, 39):
            changed_video, changed_behavior = video.clone(), behavior.clone()
            changed_video[:, t] = 255.0 - changed_video[:, t]
            changed_behavior[:, t] += 4.0
            out = model("m", changed_video, changed_behavior, pupil)
            assert out.shape == reference.shape == (2, 40, 12)  # every input frame answered
            assert torch.equal(out[:, :t], reference[:, :t])  # nothing before t moves
            assert (out[:, t] - reference[:, t]).abs().max() > 1e-4  # frame t itself does


@pytest.mark.parametrize("name", PRESETS)
def test_stepper_streamed_over_a_trial_equals_the_clip(name):
    model = _twin(name)
    core_input, _, _ = model.core_input("m", *map(torch.from_numpy, random_inputs(2, TRIAL, model.frame_shape)))
    stepper = model.core.stepper()
    states = [torch.zeros(2, *shape) for shape in model.core.state_shapes(model.frame_shape)]
    with torch.no_grad():
        clip = model.core(core_input)
        streamed = []
        for t in range(TRIAL):
            features, *states = stepper(core_input[:, :, t], *states)
            streamed.append(features)
    assert clip.shape[2] == TRIAL
    assert relative_error(torch.stack(streamed, 2).numpy(), clip.numpy()) < 1e-5
    assert not model.core.training  # the stepper is a copy: building it changed no mode of the core


@pytest.mark.parametrize("name", PRESETS)
def test_exported_step_graph_streamed_over_a_trial_equals_the_clip_graph(name, tmp_path):
    model = _twin(name)
    manifest = export_twin(model, name, {"m": {"neurons": 12, "unit_ids": list(range(12))}}, tmp_path)
    assert manifest.receptive_field is None and manifest.offset == 0
    step_entry = manifest.recording("m").graphs["step"]
    assert step_entry.details["warmup_frames"] == 0
    assert manifest.recording("m").graphs["clip"].details["op_counts"].get("Scan") == 1  # any clip length
    inputs = random_inputs(1, TRIAL, model.frame_shape, seed=3)
    clip = cpu_session(tmp_path / "m" / "clip.onnx").run(None, dict(zip(CLIP_INPUTS, inputs)))[0]
    shapes = [spec.fixed_shape for spec in manifest.graph("m", "step").states]
    streamed = stream(cpu_session(tmp_path / "m" / "step.onnx"), *inputs, shapes)
    assert clip.shape == streamed.shape == (1, TRIAL, 12)
    assert relative_error(streamed, clip) < 1e-4
    with torch.no_grad():
        reference = model("m", *map(torch.from_numpy, inputs)).numpy()
    assert relative_error(clip, reference) < 1e-4


@pytest.fixture(scope="module", params=PRESETS)
def trained(request, mini_mouse, tmp_path_factory):
    """`twin train` of a tiny recurrent preset for a few steps → (preset, run directory)."""
    run = tmp_path_factory.mktemp(request.param)
    assert twin(["train", "--data", *map(str, mini_mouse), "--out", str(run), "--preset", request.param,
                 "--steps", "4", "--quiet"]) == 0
    return request.param, run


def test_tiny_recurrent_presets_train_with_twin_train(trained):
    import json

    name, run = trained
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == name and config["receptive_field"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    correlations = [tiers["oracle"]["single_trial_correlation"] for tiers in metrics.values() if "oracle" in tiers]
    assert correlations and all(np.isfinite(correlations))


def test_served_gru_twin_equals_its_step_graph_and_recovers_after_a_crash(mini_mouse, tmp_path):
    from crash import stream_through_a_crash

    from twinserve.serving.limits import Limits
    from twinserve.serving.repository import write_repository
    from twinserve.training.data import Recording

    run, artifacts = tmp_path / "run", tmp_path / "artifacts"
    assert twin(["train", "--data", *map(str, mini_mouse), "--out", str(run), "--preset", "gru-tiny",
                 "--steps", "4", "--quiet"]) == 0
    manifest = export_run(run, artifacts)
    recording = mini_mouse[0].name
    trial = next(t for t in Recording(mini_mouse[0]).load("oracle") if t.responses is not None)
    inputs = (trial.video[:120], trial.behavior[:120], trial.pupil_center[:120])
    shapes = [spec.fixed_shape for spec in manifest.graph(recording, "step").states]
    local = stream(cpu_session(artifacts / recording / "step.onnx"), *(a[None] for a in inputs), shapes)[0]
    repository = tmp_path / "repository"
    write_repository(artifacts, repository, Limits())
    # The whole stream so far is replayed after the crash: the GRU's memory has no window.
    outputs, reconnects = stream_through_a_crash(repository, model_names(recording)["stream"], inputs, crash_at=80)
    assert reconnects == 1
    assert relative_error(outputs, local) < 1e-5
