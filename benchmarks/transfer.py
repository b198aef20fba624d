"""`twin bench transfer`: the foundation workflow of paper 003 (Fig. 3) on the family of virtual mice.

1. A cohort of family members (one recording each) trains one twin: the shared core.
2. Each new member (another mouse of the family: other neurons, RF families, behaviour, movies) gets,
   for every amount of its training data (2, 4, 8, 16 minutes by default), two twins on the same
   minutes, the same preset and seed: one trained from scratch (`steps`), one with the cohort's core
   frozen and only its head fitted (`twin train --core-from CORE --freeze-core --data-minutes M`,
   `head_steps`: on the core's features computed once, a head's step costs a small part of a whole
   twin's, so it may take more of them and still train in less time; both times are reported).
3. Reported per twin: the oracle tier's single-trial correlation as a fraction of its noise ceiling
   → benchmarks/results/transfer.json and transfer.png (fraction of ceiling against minutes of data).
   The JSON is rewritten after every run ("complete": false until the last one).

Training runs on step budgets (no wall-time budget), so the results do not depend on machine load.
Every run lands in `workdir`; a run with metrics is reused, so an interrupted bench picks up where it was
(`workdir/settings.json` keeps what the core and the recordings were made with; other settings are refused).
Imports torch only when it runs (the command line lists its defaults without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

from tqdm import tqdm

from twinserve.training.virtual_mouse.family import FAMILY_PREFIX, scaled, variant

from .harness import RESULTS, Stopwatch, machine, oracle_summary, write_results

COHORT = (40, 41, 42, 43)   # family members 0–99 are for development; HELD_OUT_SEEDS stay for `bench fidelity`
NEW = (44, 45, 46)
MINUTES = (2.0, 4.0, 8.0, 16.0)
UNBOUNDED_MINUTES = 10.0**6  # wall-time budget of every run: none in effect, the steps decide


def member_recording(folder: Path, seed: int, train_minutes: float, neurons: int, progress: bool) -> Path:
    """One recording of family member `seed`, in `folder/family-<seed>` (its name in every twin)."""
    from twinserve.training.virtual_mouse import synthesize

    target = folder / f"{FAMILY_PREFIX}{seed}"
    if not target.exists():
        member = scaled(variant(f"{FAMILY_PREFIX}{seed}"), neurons=neurons, train_minutes=train_minutes)
        written = synthesize(folder / f"writing-{seed}", recordings=1, neurons=neurons, train_minutes=train_minutes,
                             seed=seed, progress=progress, variant=member)[0]
        written.rename(target)
        written.parent.rmdir()
    return target


def check_workdir(workdir: Path, settings: dict) -> None:
    """Runs are reused by their folder's name, which does not say what the core or the recordings were
    made with: the workdir keeps those settings (settings.json) and refuses a bench with others."""
    path = workdir / "settings.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        changed = {key: (kept.get(key), value) for key, value in settings.items() if kept.get(key) != value}
        if changed:
            raise ValueError(f"{workdir} holds runs made with other settings (kept, asked): {changed}; "
                             "use another --workdir")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))


def _train_command(data: list[Path], run: Path, preset: str, steps: int, device: str, workers: int,
                   data_minutes: float | None = None, core_from: Path | None = None,
                   minutes: float | None = None) -> list[str]:
    """The `twin train` command of one run: a step budget, and no wall-time budget unless `minutes`."""
    command = [sys.executable, "-m", "twinserve.cli", "train", "--data", *map(str, data), "--out", str(run),
               "--preset", preset, "--steps", str(steps), "--minutes", str(minutes or UNBOUNDED_MINUTES),
               "--device", device, "--workers", str(workers), "--quiet"]
    if data_minutes is not None:
        command += ["--data-minutes", str(data_minutes)]
    return command + (["--core-from", str(core_from), "--freeze-core"] if core_from else [])


def _run(command: list[str], run: Path, threads: int) -> dict:
    """Run `twin train` (unless the run has its metrics already; its log in RUN.log) → its summary:
    device, precision, steps, best step, seconds, oracle metrics."""
    if not (run / "metrics.json").is_file():
        run.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with Stopwatch() as watch, open(run.with_suffix(".log"), "w") as log:
            if subprocess.run(command, stdout=subprocess.DEVNULL, stderr=log, env=environment).returncode:
                raise RuntimeError(f"twin train failed for {run}; its log: {log.name}")
        (run / "wall_seconds.json").write_text(json.dumps(watch.seconds))
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    config = json.loads((run / "config.json").read_text())
    return {"device": config["runtime"]["device"], "precision": config["precision"],
            "steps": state["step"], "best_step": state["best_step"],
            "wall_seconds": json.loads((run / "wall_seconds.json").read_text()),
            "training_seconds": state.get("step_seconds"),
            "oracle": oracle_summary(json.loads((run / "metrics.json").read_text()))}


def run_bench(out: str | Path = f"{RESULTS}/transfer.json", workdir: str | Path = "transfer-bench",
              preset: str = "small", cohort=COHORT, new=NEW, minutes=MINUTES, neurons: int = 400,
              cohort_minutes: float = 12.0, core_steps: int = 1000, core_wall_minutes: float | None = None,
              steps: int = 600, head_steps: int | None = None, jobs: int = 2, device: str = "auto",
              workers: int = 1, progress: bool = True) -> dict:
    """The whole bench → results (also written to `out`, with the figure beside it). jobs: recordings
    written and new mice's runs trained at once, each with its share of the cores (their steps do not
    depend on it). head_steps: steps of the transferred twins (default: `steps`). core_wall_minutes:
    a wall-time budget of the core's run besides its steps (None: the steps alone decide).
    device, workers: every run's `twin train --device` and `--workers` (its data-loading processes)."""
    head_steps = steps if head_steps is None else head_steps
    budget = {"scratch": steps, "transfer": head_steps}
    out, workdir = Path(out), Path(workdir)
    # Trials are cut short at random (valid lengths), so a new mouse holds 20% more than the most it is fitted on.
    new_minutes = 1.2 * max(minutes)
    check_workdir(workdir, {"preset": preset, "neurons": neurons, "cohort": list(cohort),
                            "cohort_minutes": cohort_minutes, "new_minutes": new_minutes,
                            "core_steps": core_steps, "core_wall_minutes": core_wall_minutes})
    data = workdir / "data"
    members = [(seed, cohort_minutes) for seed in cohort] + [(seed, new_minutes) for seed in new]
    with ProcessPoolExecutor(jobs) as pool:
        written = list(pool.map(member_recording, repeat(data), *zip(*members), repeat(neurons), repeat(progress)))
    cohort_data, new_data = written[:len(cohort)], written[len(cohort):]
    if progress:
        print(f"core: {preset} on {len(cohort)} recordings, {core_steps} steps", flush=True)
    core_run = workdir / "core"
    results = {"machine": machine(), "preset": preset, "neurons": neurons, "cohort_minutes": cohort_minutes,
               "core_steps": core_steps, "core_wall_minutes": core_wall_minutes, "device": device, "steps": steps,
               "head_steps": head_steps, "minutes": list(minutes), "jobs": jobs,
               "cohort": [p.name for p in cohort_data], "new": [p.name for p in new_data],
               "core": _run(_train_command(cohort_data, core_run, preset, core_steps, device, workers,
                                           minutes=core_wall_minutes),
                            core_run, os.cpu_count()),
               "runs": {}}
    runs = {(recording.name, mode, f"{amount:g}"): workdir / mode / recording.name / f"{amount:g}min-{budget[mode]}steps"
            for recording in new_data for amount in minutes for mode in ("scratch", "transfer")}
    runs = dict(sorted(runs.items(), key=lambda item: run_order(*item[0][1:])))
    recordings = {recording.name: recording for recording in new_data}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(jobs) as pool, tqdm(total=len(runs), desc="transfer bench", disable=not progress) as bar:
        def one(key):
            name, mode, amount = key
            command = _train_command([recordings[name]], runs[key], preset, budget[mode], device, workers,
                                     float(amount), core_run if mode == "transfer" else None)
            summary = _run(command, runs[key], threads)
            bar.update()
            return key, summary

        for done, ((name, mode, amount), summary) in enumerate(pool.map(one, runs), 1):
            results["runs"].setdefault(name, {}).setdefault(mode, {})[amount] = summary
            results.update(complete=done == len(runs), summary=summarize(results))
            write_results(results, out)  # after every run: an interrupted bench leaves what it measured
            plot_transfer(results, out.with_suffix(".png"))
    return results


def deciding(mode: str, amount: str) -> bool:
    """Whether a run enters the issue's checks (transfer at 4 minutes, scratch at 4 and 16): these run
    first, so that a bench cut short still answers them."""
    return (mode, amount) in {("transfer", "4"), ("scratch", "4"), ("scratch", "16")}


def run_order(mode: str, amount: str) -> int:
    """0 for the runs that decide the checks, then 1 for the other transferred twins (heads only: quick),
    2 for the other twins from scratch."""
    return 0 if deciding(mode, amount) else 1 if mode == "transfer" else 2


def fraction(summary: dict) -> float:
    """A run's oracle single-trial correlation as a fraction of the ceiling (its one recording)."""
    (oracle,) = summary["oracle"].values()
    return oracle["fraction_of_ceiling"]


def summarize(results: dict) -> dict:
    """Per new recording: fractions of ceiling by minutes for both modes, and the issue's two checks:
    at 4 minutes transfer beats scratch, and transfer at 4 minutes reaches scratch at 16 (4× the data)."""
    table, checks = {}, {"transfer_beats_scratch_at_4_minutes": [], "transfer_at_4_reaches_scratch_at_16": []}
    for name, modes in results["runs"].items():
        table[name] = {mode: {m: fraction(runs[m]) for m in sorted(runs, key=float)} for mode, runs in modes.items()}
        scratch, transfer = table[name].get("scratch", {}), table[name].get("transfer", {})
        if "4" in scratch and "4" in transfer:
            checks["transfer_beats_scratch_at_4_minutes"].append(transfer["4"] > scratch["4"])
        if "16" in scratch and "4" in transfer:
            checks["transfer_at_4_reaches_scratch_at_16"].append(transfer["4"] >= scratch["16"])
    return {"fraction_of_ceiling": table, **{key: bool(values) and all(values) for key, values in checks.items()},
            "per_recording": checks}


def plot_transfer(results: dict, path: Path) -> None:
    """Fraction of ceiling against minutes of the new mouse's data: scratch and transfer, per recording."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4))
    colors = {"scratch": "tab:gray", "transfer": "tab:red"}
    for name, modes in results["summary"]["fraction_of_ceiling"].items():
        for mode, points in modes.items():
            minutes = sorted(points, key=float)
            axis.plot([float(m) for m in minutes], [points[m] for m in minutes], "o-", color=colors[mode], alpha=0.7,
                      label=f"{mode}" if name == results["new"][0] else None)
            axis.annotate(name, (float(minutes[-1]), points[minutes[-1]]), xytext=(4, 0), textcoords="offset points",
                          fontsize=7, color=colors[mode], va="center")
    axis.set_xscale("log", base=2)
    axis.set_xlim(min(results["minutes"]) / 1.2, max(results["minutes"]) * 1.8)  # room for the names
    axis.set_xticks(results["minutes"], [f"{m:g}" for m in results["minutes"]])
    axis.set_xlabel("minutes of the new mouse's training data")
    axis.set_ylabel("oracle single-trial correlation / ceiling")
    partial = "" if results.get("complete") else " (partial)"
    axis.set_title(f"{results['preset']}: core from {len(results['cohort'])} mice, frozen, vs from scratch{partial}",
                   fontsize=9)
    axis.legend(frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
