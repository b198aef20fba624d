"""`twin bench soak`: the RSS-growth rule, the flags, and (slow) a short soak against the real `twin serve`."""

import json

import pytest


def test_rss_growth_compares_the_last_quarter_with_the_minute_after_warm_up_leaving_out_restarts():
    from twinserve.benchmarks.soak import rss_growth

    seconds = 600.0
    samples = [(t, 100.0 if t < 60 else 200.0 if t < 400 else 210.0) for t in range(0, 600, 5)]
    samples = [(t, 50.0 if 300 <= t < 360 else mb) for t, mb in samples]  # a restarted server, warming up
    assert rss_growth(samples, [300.0], seconds) == {"baseline_mb": 200.0, "final_mb": 210.0,
                                                     "growth": pytest.approx(0.05)}
    # A kill just after warm-up: the baseline is the first settled minute after it.
    samples = [(t, 80.0 if 60 <= t < 120 else 200.0) for t in range(0, 600, 5)]
    assert rss_growth(samples, [60.0], seconds)["baseline_mb"] == 200.0
    # Too short a run, or every late sample just after a kill: no growth to report.
    assert rss_growth([(t, 100.0) for t in range(0, 55, 5)], [], 55.0)["growth"] is None
    assert rss_growth(samples, [440.0, 500.0, 560.0], seconds)["final_mb"] is None


def test_tree_rss_counts_this_process_and_its_children():
    import os
    import subprocess
    import sys

    from twinserve.benchmarks.soak import tree_rss

    alone, processes = tree_rss(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with_child, more = tree_rss(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert processes >= 1 and more == processes + 1 and with_child > alone > 0


def test_soak_command_keeps_its_flags_and_defaults():
    from twinserve.cli import build_parser

    args = vars(build_parser().parse_args(["bench", "soak"]))
    assert {key: args[key] for key in ("out", "minutes", "streams", "preset", "neurons", "kills", "seed")} == {
        "out": "benchmarks/results/soak.json", "minutes": 20.0, "streams": 8, "preset": "small", "neurons": 1000,
        "kills": None, "seed": 0}


@pytest.mark.slow
def test_a_short_soak_answers_every_frame_right_through_a_tritonserver_kill(tmp_path):
    from twinserve.benchmarks.soak import run_bench

    out = tmp_path / "soak.json"
    results = run_bench(out, minutes=1.5, streams=3, preset="tiny", neurons=100, kills=1)
    assert json.loads(out.read_text()) == results and out.with_suffix(".png").stat().st_size > 0
    streams, clips, server = results["streams"], results["clips"], results["server"]
    assert streams["frames_answered"] > 1000 and clips["clips_answered"] > 0, results["errors"]
    assert streams["wrong"] == streams["lost"] == streams["refused_unexpected"] == 0, results["errors"]
    assert clips["clips_wrong"] == clips["clips_lost"] == clips["clips_refused"] == 0, results["errors"]
    assert streams["refused_expected"] > 0 and streams["abandoned_freed"] > 0 and streams["abandoned_kept"] == 0
    assert server["restarts"] == server["crashes"] == server["kills"] >= 1
    assert server["tritonservers_left"] == [] and results["passed"]
    assert len(results["rss"]["samples"]) >= 15
