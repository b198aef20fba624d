"""`twin bench memory`: peak memory of `twin train` on two data sets 8× apart, and out-of-core speed.

1. Memory: the same `twin train --steps S` (out-of-core loader, final evaluation included) on a
   small and a large data set 8× apart in size (same recordings and test tiers, longer training
   video); the peak of the summed
   proportional set size (PSS: shared pages split between the processes that map them) of `twin
   train` and its data workers, sampled every 0.2 s. Target: the peaks differ by < 20% and stay
   under 4 GB, with the large set at least as large as this machine's RAM.
2. Speed: training steps/s on a demo-sized mouse with `--loader disk` against `--loader memory`,
   interleaved (disk, memory, disk, memory, ...), steps timed without validation. Target: within 10%.

Data sets are virtual mice written into --workdir (reused when present), without truth/expected.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from twinserve.clients.plotting import pyplot

from .harness import machine, write_results

TARGETS = {"peak_ratio_max": 1.2, "peak_gb_max": 4.0, "disk_vs_memory_steps_ratio_min": 0.9}
SIZE_RATIO = 8
TEST_TIERS = {"repeats": 4, "oracle_clips": 2, "test_clips": 1}  # small, so the training video sets the size


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def tree_pss(process: psutil.Process) -> int:
    """Proportional set size of a process and its children, bytes (0 for those already gone)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in members:
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_measured(command: list[str], interval: float = 0.2) -> dict:
    """Run `command`, sampling its process tree's PSS → {seconds, peak_pss_bytes, samples}."""
    started = time.time()
    child = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples, errors = [], []
    reader = threading.Thread(target=lambda: errors.append(child.stderr.read()), daemon=True)
    reader.start()
    while child.poll() is None:
        samples.append((round(time.time() - started, 2), tree_pss(child)))
        time.sleep(interval)
    reader.join()
    if child.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} … failed ({child.returncode}): {errors[0][-2000:]}")
    return {"seconds": time.time() - started, "peak_pss_bytes": max(s for _, s in samples) if samples else 0,
            "samples": samples}


def synthesize(folder: Path, recordings: int, neurons: int, minutes: float, progress: bool) -> list[str]:
    """SENSORIUM-like recordings of `minutes` of training video and small test tiers (`TEST_TIERS`),
    without truth/expected, into `folder` unless a finished set is there → the recording folders."""
    from twinserve.training.virtual_mouse import synthesize as write

    done = folder / ".complete"
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write(folder, recordings=recordings, neurons=neurons, train_minutes=minutes, seed=0, progress=progress,
              neuron_step=0.01, expected="none", workers=2, **TEST_TIERS)
        done.touch()
    return sorted(str(p) for p in folder.iterdir() if p.is_dir())


def minutes_for_ratio(small_minutes: float, ratio: float = SIZE_RATIO) -> float:
    """Training minutes per recording that make a data set `ratio` times the size of one with
    `small_minutes` (trials of 10 s; the test tiers and the 2 `none` trials stay the same)."""
    other = TEST_TIERS["repeats"] * (TEST_TIERS["oracle_clips"] + 4 * TEST_TIERS["test_clips"]) + 2
    return (ratio * (small_minutes * 6 + other) - other) / 6


def train_command(data: list[str], out: Path, preset: str, steps: int, loader: str, evaluate_every: int) -> list[str]:
    shutil.rmtree(out, ignore_errors=True)
    return [sys.executable, "-c", "import sys; from twinserve.training.train import train; "
            f"train(sys.argv[1:], {str(out)!r}, preset={preset!r}, progress=False, loader={loader!r}, "
            f"steps={steps}, eval_every={evaluate_every}, minutes=1e6)", *data]


def steps_per_second(out: Path) -> float:
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    return state["step"] / state["step_seconds"]


def run_bench(out: str | Path, workdir: str | Path, neurons: int = 7900, recordings: int = 2,
              small_minutes: float = 20.0, steps: int = 20, speed_steps: int = 60, repeats: int = 3,
              preset: str = "small", progress: bool = True) -> dict:
    workdir = Path(workdir)
    ram = psutil.virtual_memory().total
    large_minutes = minutes_for_ratio(small_minutes)
    results = {"config": {"neurons": neurons, "recordings": recordings, "small_minutes": small_minutes,
                          "large_minutes": large_minutes, "test_tiers": TEST_TIERS, "steps": steps,
                          "speed_steps": speed_steps, "repeats": repeats, "preset": preset},
               "machine": {**machine(), "ram_bytes": ram}, "targets": TARGETS, "memory": {}}
    for size, minutes in (("small", small_minutes), ("large", large_minutes)):
        data = synthesize(workdir / f"data-{size}", recordings, neurons, minutes, progress)
        measured = run_measured(train_command(data, workdir / f"run-{size}", preset, steps, "disk", steps))
        results["memory"][size] = {"data_bytes": folder_bytes(workdir / f"data-{size}"), **measured}
        if progress:
            print(f"{size}: {results['memory'][size]['data_bytes'] / 1e9:.1f} GB of data, peak "
                  f"{measured['peak_pss_bytes'] / 1e9:.2f} GB in {measured['seconds']:.0f} s", file=sys.stderr)
        write_results(results, out)
    small, large = results["memory"]["small"], results["memory"]["large"]
    peaks = small["peak_pss_bytes"], large["peak_pss_bytes"]
    results["memory"]["peak_ratio"] = max(peaks) / min(peaks)
    results["memory"]["data_ratio"] = large["data_bytes"] / small["data_bytes"]
    results["memory"]["large_data_over_ram"] = large["data_bytes"] / ram

    demo = synthesize(workdir / "data-demo", 2, 300, 6.0, progress)
    speed = {"disk": [], "memory": []}
    for _ in range(repeats):
        for loader in speed:
            run = workdir / f"run-speed-{loader}"
            subprocess.run(train_command(demo, run, preset, speed_steps, loader, speed_steps), check=True)
            speed[loader].append(steps_per_second(run))
    median = {loader: sorted(values)[len(values) // 2] for loader, values in speed.items()}
    results["speed"] = {"steps_per_s": speed, "median_steps_per_s": median,
                        "disk_vs_memory": median["disk"] / median["memory"]}
    results["targets_met"] = {
        "peak_ratio": results["memory"]["peak_ratio"] < TARGETS["peak_ratio_max"],
        "peak_under_4gb": max(peaks) < TARGETS["peak_gb_max"] * 1e9,
        "large_data_at_least_ram": large["data_bytes"] >= ram,
        "disk_within_10_percent": results["speed"]["disk_vs_memory"] >= TARGETS["disk_vs_memory_steps_ratio_min"],
    }
    write_results(results, out)
    plot(results, Path(out).with_suffix(".png"))
    return results


def plot(results: dict, path: Path) -> None:
    """PSS of `twin train` over time on the small and the large data set."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    for size, measured in results["memory"].items():
        if isinstance(measured, dict):
            seconds, pss = zip(*measured["samples"]) if measured["samples"] else ((), ())
            axis.plot(seconds, [p / 1e9 for p in pss], label=f"{size}: {measured['data_bytes'] / 1e9:.1f} GB of data")
    axis.axhline(TARGETS["peak_gb_max"], color="C3", linestyle="--", linewidth=1, label="target")
    axis.set(xlabel="seconds", ylabel="PSS of twin train (GB)",
             title=f"{results['config']['steps']} training steps + evaluation, {results['config']['preset']}")
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
