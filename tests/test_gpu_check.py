"""The GPU check's script runs end to end (on the CPU here; its numbers count only on a GPU)."""

import json

from twinserve.benchmarks.gpu_train import run_bench


def test_gpu_train_bench_runs_on_the_cpu_and_reports(tmp_path):
    out = tmp_path / "gpu_train.json"
    results = run_bench(out, preset="tiny", steps=3, device="cpu", neurons=30, recordings=1, train_minutes=1.0,
                        progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["config"]["device"] == "cpu" and results["config"]["precision"] == "fp32"
    assert results["steps_per_s"] > 0 and results["training_frames_per_s"] > results["steps_per_s"]
    assert set(results["oracle"]) == {"virtual-mouse-0"}
    assert results["machine"]["gpu"] == {}
