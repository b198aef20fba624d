"""`twin bench`: the harness (interleaving, minimum duration, atomic writer), the FLOP arithmetic the
benchmarks report, and every benchmark run small. Benchmarks that start a Triton server are slow."""

import itertools
import json
import time

import numpy as np
import pytest
import torch

from twinserve.benchmarks.fidelity import EXPERIMENTS, _eye_shift_gain, _member_settings, _readouts, _refreshed, plot
from twinserve.benchmarks.harness import Rate, Workload, interleave, measure, write_results
from twinserve.cli import main as twin
from twinserve.clients.experiments.common import load_truth
from twinserve.contract import BEHAVIOR_CHANNELS
from twinserve.errors import EXIT_USAGE
from twinserve.training.checkpoint import load_run, save_weights
from twinserve.training.data import Recording
from twinserve.training.model import Twin
from twinserve.training.presets import PRESETS

CORE_INPUTS = 1 + BEHAVIOR_CHANNELS  # a core sees the video and one map per behaviour channel


# --- the harness -------------------------------------------------------------------------------
def test_workloads_take_turns_after_warming_up():
    calls = []
    workloads = {name: Workload(lambda name=name: calls.append(name)) for name in "abc"}
    rates = measure(workloads, seconds=0.0, repeats=3, warmup=2)
    assert calls == list("aabbcc") + list("abc") * 3
    assert all(len(rate.rates) == 3 for rate in rates.values())


def test_every_measurement_lasts_at_least_the_minimum_duration_of_timed_calls():
    log = []

    def workload(name, sleep, units, prepare=None):
        return Workload(lambda: (log.append(name), time.sleep(sleep)), units, prepare)

    seconds, prepare_s = 0.05, 0.01
    workloads = {"fast": workload("fast", 0.001, 2.0, lambda: time.sleep(prepare_s)),
                 "slow": workload("slow", 0.02, 1.0)}
    rates = measure(workloads, seconds=seconds, repeats=2, warmup=0)
    runs = [(name, len(list(group))) for name, group in itertools.groupby(log)]
    assert [name for name, _ in runs] == ["fast", "slow"] * 2  # round robin, one measurement per turn
    measured = [rate for pair in zip(rates["fast"].rates, rates["slow"].rates) for rate in pair]
    for (name, calls), rate in zip(runs, measured):
        assert calls > 1 and workloads[name].units * calls / rate >= seconds  # timed seconds of the measurement
    # The untimed preparation (10 ms before every call) is left out of the fast path's rate.
    assert max(rates["fast"].rates) > 2.0 / prepare_s


def test_rate_reports_the_median_and_the_spread_over_rounds():
    rate = Rate((10.0, 30.0, 20.0))
    assert rate.median == 20.0 and rate.spread == pytest.approx(1.0)
    paths = {"x": iter(range(3)).__next__, "y": iter("pqr").__next__}
    assert interleave(paths, 3) == {"x": [0, 1, 2], "y": ["p", "q", "r"]}


def test_results_are_written_atomically_into_a_new_folder(tmp_path):
    out = tmp_path / "deep" / "results" / "bench.json"
    assert write_results({"rate": 1.5}, out) == out
    assert json.loads(out.read_text()) == {"rate": 1.5}
    with pytest.raises(TypeError):  # not JSON: the old file stays whole, no temporary is left behind
        write_results({"rate": object()}, out)
    assert json.loads(out.read_text()) == {"rate": 1.5}
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]


# --- FLOP arithmetic -----------------------------------------------------------------------------
def _counted_flops(module, *inputs) -> int:
    """FLOPs PyTorch's counter sees (matrix products and convolutions), attention written out."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from twinserve.training.transformer import use_fused_attention

    use_fused_attention(module, False)  # written out, so the counter sees the attention's matrix products
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def _interpolation_flops(core, shape: tuple[int, int]) -> int:
    """FLOPs of the fine maps' linear interpolation on one output frame (`factorized.FineMaps`): element-wise
    work, which the counter does not see; 0 for a core without fine maps."""
    if getattr(core, "fine", None) is None:
        return 0
    cells = tuple(-(-side // core.cell_stride) for side in shape)  # the first layer's cells, padded by k // 2
    return core.fine.flops(core.layers[-1].temporal.out_channels, cells)


@pytest.mark.parametrize("preset", ["small", "vit-small"])
def test_streamed_frame_arithmetic_matches_pytorchs_flop_counter(preset):
    import torch

    from twinserve.benchmarks.twins import random_twin

    model = random_twin(preset, {"m": 30}).eval()
    core, shape = model.core, model.frame_shape
    states = [torch.zeros(1, *s) for s in core.state_shapes(shape)]
    counted = _counted_flops(core.stepper(), torch.zeros(1, CORE_INPUTS, *shape), *states)
    assert counted + _interpolation_flops(core, shape) == core.step_flops(shape)


# A transformer clip is counted exactly when one block sees exactly W frames: its banded attention is the window.
@pytest.mark.parametrize("preset, extra_frames", [("small", 5), ("vit-tiny", 0)])
def test_clip_arithmetic_matches_pytorchs_flop_counter(preset, extra_frames):
    import torch

    from twinserve.benchmarks.twins import random_twin

    model = random_twin(preset, {"m": 30}).eval()
    frames = model.receptive_field + extra_frames
    video = torch.zeros(1, CORE_INPUTS, frames, *model.frame_shape)
    interpolation = (extra_frames + 1) * _interpolation_flops(model.core, model.frame_shape)
    assert _counted_flops(model.core, video) + interpolation == model.core.flops(model.frame_shape, frames)


def test_re_running_the_window_costs_what_the_issue_counts_for_base():
    from twinserve.benchmarks.twins import random_twin

    model = random_twin("base", {"m": 8000})
    # The issue's count for base: 19 frames through layer 1, 9 through layer 2, 5 through layer 3.
    assert 5.0 < model.clip_flops(model.receptive_field) / model.step_flops() < 6.0


# --- the benchmarks ------------------------------------------------------------------------------
def test_bench_commands_keep_their_flags_and_defaults():
    from twinserve.cli import build_parser

    parser = build_parser()
    defaults = {"train": {"repeats": 3, "presets": ["tiny", "small", "base"], "contiguous_input": []}, "cores": {"presets": ["small", "vit-small", "gru-small", "fnn-small"], "minutes": 8.0, "data": None},
                "export": {"presets": ["base", "vit-base"], "neurons": 8000},
                "stream": {"presets": ["small", "base"], "neurons": 8000, "frames": 150},
                "score": {"preset": "small", "neurons": 8000, "stimuli": 24},
                "fidelity": {"members": None, "preset": "small", "minutes": 15.0, "neurons": 500, "train_minutes": 10.0,
                             "recordings": 1, "workdir": None, "skip_experiments": False}}
    for command, expected in defaults.items():
        args = vars(parser.parse_args(["bench", command]))
        assert args["out"] == f"benchmarks/results/{command}.json"
        assert {key: args[key] for key in expected} == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "export", "--presets", "no-such-preset"])


def test_train_benchmark_measures_every_preset(tmp_path):
    from twinserve.benchmarks.train import run_bench

    results = run_bench(tmp_path / "train.json", presets=("tiny", "vit-tiny"), repeats=2, seconds=0.0,
                        contiguous=("tiny",))
    assert list(results["presets"]) == ["tiny", "vit-tiny", "tiny-contiguous"]
    for result in results["presets"].values():
        assert result["train_output_frames_per_s"] > 0 and result["inference_output_frames_per_s"] > 0
        assert result["step_seconds"] > 0 and result["parameters"] > 0
    assert set(results["tiny_channels_last_speedup"]) == {"train", "inference"}
    assert json.loads((tmp_path / "train.json").read_text()) == results
    with pytest.raises(ValueError, match="factorized presets"):
        run_bench(tmp_path / "other.json", presets=("tiny",), contiguous=("vit-tiny",))
    alone = run_bench(tmp_path / "alone.json", presets=(), repeats=1, seconds=0.0, contiguous=("tiny",))
    assert list(alone["presets"]) == ["tiny", "tiny-contiguous"]


def test_export_benchmark_runs_and_counts_arithmetic(tmp_path):
    from twinserve.benchmarks.export import WINDOW_PATHS, run_bench

    results = run_bench(tmp_path / "export.json", presets=("tiny", "gru-tiny"), neurons=50,
                        seconds=0.1, window_outputs=3, repeats=2)
    for preset, window in (("tiny", True), ("gru-tiny", False)):  # a window to re-run, and unbounded memory
        result = results["presets"][preset]
        paths = result["paths"]
        assert set(paths) == {"pytorch_eager_clip", "onnxruntime_clip", "onnxruntime_step_stream",
                              *(WINDOW_PATHS if window else ())}
        assert all(p["output_frames_per_s"] > 0 and p["gflop_per_output_frame"] > 0 for p in paths.values())
        assert result["state_bytes_per_stream"] > 0
        # unbounded memory (recurrent): no window to re-run, and the JSON says why
        assert set(result.get("skipped", {})) == (set() if window else set(WINDOW_PATHS))
        assert ("step_over_onnxruntime_window_rerun" in result["ratios"]) == window
    assert results["machine"]["matmul_fp32_gflops"] > 0
    assert json.loads((tmp_path / "export.json").read_text())["presets"] == results["presets"]


@pytest.mark.slow
def test_cores_benchmark_trains_both_cores_for_the_same_wall_time(small_mouse, tmp_path):
    out = tmp_path / "cores.json"
    assert twin(["bench", "cores", "--presets", "tiny", "vit-tiny", "--minutes", "0.1", "--data",
                 *map(str, small_mouse), "--out", str(out), "--quiet"]) == 0
    results = json.loads(out.read_text())
    assert {p: r["core"] for p, r in results["presets"].items()} == {"tiny": "factorized", "vit-tiny": "transformer"}
    for result in results["presets"].values():
        assert 0.1 <= result["training_minutes"] < 0.5 and result["steps"] > 0
        assert np.isfinite(result["oracle_single_trial_correlation"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_fidelity_benchmark_refuses_an_unknown_member_before_any_work(tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    assert twin(["bench", "fidelity", "--members", "family-100", "mouse-7", "--workdir", str(tmp_path / "work"),
                 "--out", str(out)]) == EXIT_USAGE
    assert "unknown variant 'mouse-7'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "work").exists()


def test_fidelity_benchmark_trains_each_member_on_its_own_minutes_when_asked(tmp_path, capsys):
    from twinserve.cli import build_parser
    from twinserve.training.virtual_mouse.family import variant

    parser = build_parser()
    assert parser.parse_args(["bench", "fidelity", "--train-minutes", "own"]).train_minutes == "own"
    assert parser.parse_args(["bench", "fidelity", "--train-minutes", "4.5"]).train_minutes == 4.5
    settings = {"neurons": 500, "train_minutes": "own"}
    own = {name: _member_settings(settings, name)["train_minutes"] for name in ("family-100", "family-103")}
    assert own == {name: variant(name).train_minutes for name in own} and own["family-100"] != own["family-103"]
    assert _member_settings({**settings, "train_minutes": 10.0}, "family-103")["train_minutes"] == 10.0
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "fidelity", "--train-minutes", "mine"])
    assert "'mine' is neither a number of minutes nor 'own'" in capsys.readouterr().err
    out = tmp_path / "fidelity.json"
    assert twin(["bench", "fidelity", "--train-minutes", "0", "--workdir", str(tmp_path / "work"),
                 "--out", str(out)]) == EXIT_USAGE
    assert "--train-minutes positive or 'own'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_reused_member_gains_the_figures_added_to_the_bench_from_its_saved_experiments(tmp_path):
    def validations(osi, dsi):
        return {"tuning": {"median_orientation_error_deg": 8.0, "osi_correlation": osi, "dsi_correlation": dsi,
                           "median_orientation_error_on_screen_deg": 6.0, "median_orientation_error_off_screen_deg": 12.0},
                "rf": {"median_center_distance_px": 2.0}, "tuning_floor": {"median_orientation_error_deg": 1.0,
                                                                          "osi_correlation": 0.9, "dsi_correlation": 0.8},
                "rf_floor": {"median_center_distance_px": 0.5, "median_center_distance_on_screen_px": 0.4}}

    saved = {"steps": 10, "recordings": {"a": {"fraction_of_ceiling": 0.8, **validations(0.5, 0.1)},
                                         "b": {"fraction_of_ceiling": 0.6, **validations(0.3, float("nan"))},
                                         "no experiments": {"fraction_of_ceiling": 0.7}}}
    entry = _refreshed(saved)  # as written before the bench reported OSI and DSI correlations
    assert entry["recordings"]["a"]["osi_correlation"] == 0.5 and entry["recordings"]["b"]["dsi_correlation"] is None
    assert entry["osi_correlation"] == pytest.approx(0.4) and entry["dsi_correlation"] == pytest.approx(0.1)
    assert entry["osi_correlation_floor"] == pytest.approx(0.9) and entry["dsi_correlation_floor"] == pytest.approx(0.8)
    assert entry["fraction_of_ceiling"] == pytest.approx(0.7) and entry["steps"] == 10
    assert entry["rf_center_error_on_screen_floor_px"] == 0.4 and entry["rf_center_error_on_screen_px"] is None
    assert entry["orientation_error_on_screen_deg"] == 6.0 and entry["orientation_error_off_screen_deg"] == 12.0
    assert entry["orientation_error_off_screen_floor_deg"] is None  # the mouse's summary was written without the split
    plot({"config": {"preset": "small", "minutes": 15.0}, "members": {"family-1": entry, "family-2": {"steps": 0}}},
         tmp_path / "fidelity.png")  # a member without figures is drawn empty
    assert (tmp_path / "fidelity.png").stat().st_size > 1000


def test_eye_shift_gain_reads_one_for_the_true_shift_and_minus_one_for_the_reversed(small_mouse):
    data = small_mouse[0]
    recording = Recording(data)
    twin = Twin(PRESETS["tiny"].model_config(), {data.name: recording.neurons})
    head = twin.heads[data.name]
    head.initialize(recording.statistics)
    eye_gain = float(load_truth(data)["eye_gain"][0])  # as the bench reads it (`_readouts`)
    assert _eye_shift_gain(head, data, eye_gain, twin.frame_shape) == 0  # an untrained shifter makes none
    height, width = twin.frame_shape
    small = 0.01  # the shifter made the simulator's retinal shift: nearly linear, tanh of small values
    with torch.no_grad():
        for layer in (head.shifter[0], head.shifter[2]):
            layer.weight.zero_(), layer.bias.zero_()
        head.shifter[0].weight[[0, 1], [0, 1]] = small
        head.shifter[2].weight[[0, 1], [0, 1]] = -eye_gain * head.pupil_std / torch.tensor([width / 2, height / 2]) / small
    assert 0.9 < _eye_shift_gain(head, data, eye_gain, twin.frame_shape) <= 1.0
    with torch.no_grad():
        head.shifter[2].weight.neg_()  # the image moved the wrong way
    assert -1.0 <= _eye_shift_gain(head, data, eye_gain, twin.frame_shape) < -0.9


@pytest.mark.slow
def test_fidelity_benchmark_trains_serves_and_validates_a_member(tmp_path):
    out, work = tmp_path / "fidelity.json", tmp_path / "work"
    command = ["bench", "fidelity", "--members", "family-100", "--preset", "tiny", "--neurons", "60",
               "--train-minutes", "1", "--minutes", "0.5", "--workdir", str(work), "--out", str(out), "--quiet"]
    assert twin(command) == 0
    results = json.loads(out.read_text())
    member = results["members"]["family-100"]
    tiny = PRESETS["tiny"]  # the recipe is part of the settings: a rerun under another one retrains
    assert results["config"]["twin"]["core"] == tiny.core and results["config"]["trainer"]["lr"] == tiny.train.lr
    assert results["config"]["twin"]["centred_shift"] is True  # the heads' settings too: old twins are retrained
    assert member["sizes"] == {"recordings": 1, "neurons": 60, "train_minutes": 1.0}
    assert -2 < member["eye_shift_gain"] < 2
    assert member["member_sizes"]["neurons"] > 0 and member["steps"] > 0 and 0 < member["training_minutes"] < 1
    assert set(member["seconds"]) == {"synthesize", "train", "export", "serve", "experiments"}
    assert 0 < member["ceiling_single_trial_correlation"] <= 1
    assert -1 <= member["oracle_single_trial_correlation"] <= 1 and np.isfinite(member["fraction_of_ceiling"])
    assert all(member[f"fev_e_{tier}"] is not None for tier in ("live_test_bonus", "final_test_bonus"))
    recording = member["recordings"]["virtual-mouse-0"]
    assert recording["neurons"] == 60
    assert (member["median_orientation_error_deg"] is None) == (recording["tuning"]["tuned_neurons"] == 0)
    assert (member["median_rf_center_error_px"] is None) == (recording["rf"]["clear_rf_neurons"] == 0)
    assert 0 <= (member["median_orientation_error_deg"] or 0) <= 90
    # where the readout reads: the start's retinotopic fit, and the trained positions against the truth
    assert recording["readout_start_r2"] <= 1 and 0 <= member["readout_position_error_px"] < 80
    # the same experiments on the simulated mouse: exact responses, so its own estimates are close
    assert member["orientation_error_floor_deg"] < 5 and member["rf_center_error_floor_px"] < 3
    assert recording["tuning_floor"]["tuned_neurons"] == recording["tuning"]["tuned_neurons"]
    assert 0 <= member["orientation_error_vs_mouse_deg"] <= 90 and member["rf_center_error_vs_mouse_px"] >= 0
    assert member["osi_correlation"] == recording["tuning"]["osi_correlation"] and member["osi_correlation_floor"] > 0.5
    summary = results["summary"]
    assert summary["worst_member"] == summary["best_member"] == "family-100"
    assert summary["fraction_of_ceiling_spread"] == 0 and summary["targets_met"]["worst_within_spread_of_best"]
    assert summary["worst_rf_center_error_floor_px"] == member["rf_center_error_floor_px"]
    assert set(summary["targets_met"]) == {"fraction_of_ceiling_on_every_member", "worst_within_spread_of_best",
                                           "orientation_error", "rf_center_error"}
    assert out.with_suffix(".png").stat().st_size > 0
    assert twin(command) == 0  # a rerun in the same workdir reuses the member measured with the same settings
    assert json.loads(out.read_text())["members"] == results["members"]
    saved_path = work / "family-100" / "member.json"
    saved = json.loads(saved_path.read_text())
    saved["experiments"]["rf"]["grid"] = [4, 6]  # as if measured with another RF protocol
    saved_path.write_text(json.dumps(saved))
    assert twin(command) == 0  # reruns the experiments on the kept twin, does not retrain it
    reprobed = json.loads(out.read_text())["members"]["family-100"]
    assert reprobed["steps"] == member["steps"] and reprobed["seconds"]["train"] == member["seconds"]["train"]
    assert reprobed["recordings"]["virtual-mouse-0"]["rf"]["clear_rf_neurons"] > 0
    assert json.loads(saved_path.read_text())["experiments"] == EXPERIMENTS
    # a readout placed on the true RF centres reads from them: the pixel convention of the readout error
    run, data = work / "family-100" / "run", work / "family-100" / "data" / "virtual-mouse-0"
    trained, _ = load_run(run)
    centres = np.load(data / "truth" / "neurons" / "rf_center.npy")
    height, width = trained.frame_shape
    with torch.no_grad():
        trained.heads["virtual-mouse-0"].readout.position.copy_(torch.from_numpy((centres + 0.5) / [width, height] * 2 - 1))
    save_weights(trained, run / "model.safetensors")
    figures = _readouts(run, [data], {})["virtual-mouse-0"]
    assert figures["readout_position_error_px"] < 1e-3 and figures["readout_start_r2"] is None


@pytest.mark.slow
def test_stream_benchmark_measures_both_clients_and_realtime_capacity(tmp_path):
    from twinserve.benchmarks.stream import run_bench

    results = run_bench(tmp_path / "stream.json", presets=("tiny",), neurons=50, frames=20, realtime_limit=2,
                        realtime_frames=15)
    tiny = results["presets"]["tiny"]
    for source in ("client", "client_copying", "perf_analyzer"):
        assert [row["streams"] for row in tiny[source]] == [1, 4, 16]
        assert all("error" not in row and 0 < row["p50_ms"] <= row["p99_ms"] for row in tiny[source]), tiny[source]
    for path in ("realtime", "realtime_copying"):
        assert 0 <= tiny[path]["max_streams_at_30fps"] <= 2 and len(tiny[path]["runs"]) == 2
    assert tiny["state_bytes_per_stream"] > 0
    assert json.loads((tmp_path / "stream.json").read_text()) == results


@pytest.mark.slow
def test_score_benchmark_compares_the_served_and_the_local_path(tmp_path):
    from twinserve.benchmarks.score import run_bench

    results = run_bench(tmp_path / "score.json", preset="tiny", neurons=50, stimuli=3, frames=40, repeats=2)
    for path in ("local_onnxruntime", "twin_score_via_triton"):
        assert results[path]["frames_per_s"] > 0 and results[path]["seconds"] > 0
    assert results["server_over_local"] > 0 and results["target"] == 0.7
    assert json.loads((tmp_path / "score.json").read_text()) == results


def test_a_server_that_dies_under_a_measurement_is_recorded_restarted_and_measured_again(tmp_path):
    from twinserve.benchmarks.served import ServedTwin
    from twinserve.benchmarks.stream import _surviving

    crashes, calls = [], []

    def measure():  # the first measurement kills the server under it, as the bundled tritonserver's abort does
        calls.append(served.url)
        if len(calls) == 1:
            served.server.process.kill()
            served.server.process.wait(timeout=30)
        return len(calls)

    with ServedTwin("tiny", 20, tmp_path) as served:
        assert _surviving(served, "realtime", crashes, measure) == 2
        assert [crash["streams"] for crash in crashes] == ["realtime"] and not served.crashed()
        assert _surviving(served, "realtime", crashes, measure) == 3 and len(crashes) == 1  # a live server: once
