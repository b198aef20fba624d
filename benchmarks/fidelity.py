"""`twin bench fidelity`: how close trained twins come to the truth on held-out members of the family
of virtual mice → benchmarks/results/fidelity.json and fidelity.png.

For each member (default: the first `DEFAULT_MEMBERS` of `HELD_OUT_SEEDS`, `family-<seed>`) the bench
1. synthesizes its recordings, scaled down from the member's own sizes (neurons, training minutes) so
   that the bench fits in hours, or with the member's own training minutes (`OWN_TRAIN_MINUTES`:
   5 to 60, so that a member's fidelity may be limited by its data as a user's twin is); the sizes
   used and the member's own are both recorded;
2. trains a twin of one preset for a fixed wall time (no step budget) and evaluates it on every tier;
3. exports it, serves it with the real Triton server on loopback and runs the in-silico tuning and RF
   experiments through its clip model, validated against the recording's ground truth; stops the server.

Measured per recording (a member's figure is the mean over its recordings):
- oracle single-trial correlation, its ceiling (responses vs the true expected response) and their
  ratio, the fraction of the ceiling;
- FEVE on the gratings (`live_test_bonus`) and the dots (`final_test_bonus`) tiers;
- median orientation error (deg) over neurons with true OSI > 0.3 (`tuning.validate`) and median
  RF-centre error (px) over neurons with a clear RF map (`rf.validate`);
- how selective the twin says each neuron is: the correlation over neurons of its OSI and DSI with the
  true ones (`tuning.validate`);
- where the readout reads: the R² of the retinotopic fit its start came from (`positions.readout_start`;
  None for a transferred core) and the median distance (px) of the trained readout positions from the
  true RF centres (where the twin reads at the mean eye position, `model.Head`'s centred shift);
- how much of the image's true eye-movement shift the twin makes (`_eye_shift_gain`, 1: all of it);
- the same errors and correlations of the same experiments run on the simulated mouse itself
  (`simulated_twin`): the experiments' own floor, which no twin can beat (an RF centre off screen,
  subunits spread around the envelope; `_floor`), and the twin's estimates against the mouse's from the
  same experiment (`_vs_mouse`);
and per member the steps trained and the wall seconds of every phase.
Across members: the worst and the best fraction of the ceiling, their spread, and whether each of
`TARGETS` holds on every member (None where a figure is missing, e.g. with `experiments=False`).

Results are rewritten after every member, so an interrupted run keeps what it did. Every member works
in `<workdir>/<member>`; with a kept `workdir`, a rerun reuses each member already measured with the same
settings (its `member.json`), reruns only the experiments on its kept twin where they changed since
(`EXPERIMENTS`: their keyword defaults), and rebuilds the folder of any other.
"""

from __future__ import annotations

import inspect
import json
import shutil
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from twinserve.clients.experiments.rf import run_rf
from twinserve.clients.experiments.common import load_truth
from twinserve.clients.experiments.tuning import TRUE_OSI_THRESHOLD, orientation_error, run_tuning
from twinserve.clients.plotting import pyplot
from twinserve.contract import model_names
from twinserve.export.onnx_export import export_run
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Ports, TritonServer
from twinserve.training.checkpoint import load_run
from twinserve.training.data import Recording
from twinserve.training.model import Head, twin_config
from twinserve.training.positions import pixel_positions
from twinserve.training.presets import preset as find_preset
from twinserve.training.train import train
from twinserve.training.virtual_mouse import synthesize
from twinserve.training.virtual_mouse.family import FAMILY_PREFIX, HELD_OUT_SEEDS, OWN_TRAIN_MINUTES, variant

from .harness import RESULTS, Stopwatch, machine, write_results
from .simulated_twin import SimulatedTwin

DEFAULT_MEMBERS = 6
DATA_SEED = 0  # the seed of `synthesize` (the member's name fixes its distributions)
TARGETS = {"fraction_of_ceiling_min": 0.7, "fraction_of_ceiling_spread_max": 0.1,
           "orientation_error_deg_max": 10.0, "rf_center_error_px_max": 3.0}
FEVE_TIERS = ("live_test_bonus", "final_test_bonus")  # drifting gratings, flashing dots
HEADLINE = ("oracle_single_trial_correlation", "ceiling_single_trial_correlation", "fraction_of_ceiling",
            *(f"fev_e_{tier}" for tier in FEVE_TIERS), "median_orientation_error_deg", "median_rf_center_error_px",
            "orientation_error_floor_deg", "rf_center_error_floor_px", "orientation_error_vs_mouse_deg",
            "rf_center_error_vs_mouse_px", "rf_center_error_on_screen_px", "rf_center_error_on_screen_floor_px",
            *(f"orientation_error_{where}_screen{suffix}_deg" for where in ("on", "off") for suffix in ("", "_floor")),
            "osi_correlation", "osi_correlation_floor", "dsi_correlation", "dsi_correlation_floor",
            "readout_start_r2", "readout_position_error_px", "eye_shift_gain")
EYE_SHIFT_TRIALS = 20  # training trials whose pupil positions `_eye_shift_gain` compares over


def _protocol(experiment) -> dict:
    """An experiment's keyword defaults (its stimuli and analysis) as JSON values."""
    return {key: list(p.default) if isinstance(p.default, tuple) else p.default
            for key, p in inspect.signature(experiment).parameters.items()
            if key not in ("truth", "progress", "twin") and p.default is not inspect.Parameter.empty}


EXPERIMENTS = {"tuning": _protocol(run_tuning), "rf": _protocol(run_rf)}  # a kept member probed under others is reprobed


def default_members(count: int = DEFAULT_MEMBERS) -> list[str]:
    return [f"{FAMILY_PREFIX}{seed}" for seed in HELD_OUT_SEEDS[:count]]


def _number(value) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    return float(value) if value is not None and np.isfinite(value) else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


@contextmanager
def _phase(seconds: dict, member: str, name: str, what: str = ""):
    """Time one phase of a member into `seconds[name]`, with a line on stderr as it starts and ends."""
    print(f"[{member}] {name} {what}".rstrip(), file=sys.stderr, flush=True)
    with Stopwatch() as watch:
        yield
    seconds[name] = round(watch.seconds, 1)
    print(f"[{member}] {name}: {watch.seconds:.0f} s", file=sys.stderr, flush=True)


def _scores(tiers: dict) -> dict:
    """A recording's neurons, oracle correlations and FEVE on the bonus tiers, from `train`'s metrics."""
    oracle = tiers["oracle"]
    return {"neurons": oracle["neurons"],
            "oracle_single_trial_correlation": _number(oracle["single_trial_correlation"]),
            "ceiling_single_trial_correlation": _number(oracle.get("ceiling_single_trial_correlation")),
            "fraction_of_ceiling": _number(oracle.get("fraction_of_ceiling")),
            **{f"fev_e_{tier}": _number(tiers.get(tier, {}).get("fev_e")) for tier in FEVE_TIERS}}


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def _twin_vs_mouse(twin: Path, mouse: Path, true_osi: np.ndarray) -> dict:
    """The twin's estimates (files under `twin`) against the simulated mouse's (under `mouse`) from the
    same experiments: median orientation difference over neurons with true OSI > 0.3, median distance
    of RF centres over neurons with a clear RF in both."""
    tuning = [np.load(folder / "tuning" / "tuning.npz")["preferred_orientation_deg"] for folder in (twin, mouse)]
    rf = [np.load(folder / "rf" / "rf.npz") for folder in (twin, mouse)]
    clear = rf[0]["clear_rf"] & rf[1]["clear_rf"]
    return {"orientation_error_vs_mouse_deg": _median(orientation_error(*tuning)[true_osi > TRUE_OSI_THRESHOLD]),
            "rf_center_error_vs_mouse_px": _median(np.linalg.norm(rf[0]["rf_center"] - rf[1]["rf_center"], axis=1)[clear])}


def _eye_shift_gain(head: Head, recording: Path, eye_gain: float, frame_shape: tuple[int, int]) -> float | None:
    """How much of the true image shift the head's eye shift makes: the least-squares slope of the
    head's shift (px) on the simulator's retinal shift (`eye_gain` px per eye-camera px, from the
    truth), both centred, over the pupil positions of the first `EYE_SHIFT_TRIALS` training trials.
    1: all of it; heads that moved their readouts by the output frame's pupil made 0.5–0.8 (README)."""
    data = Recording(recording)
    pupil = np.concatenate([data.trial(int(i)).pupil_center for i in data.trials_in("train")[:EYE_SHIFT_TRIALS]])
    true = eye_gain * (pupil - pupil.mean(0))  # retina(p) = screen(p - true) (`virtual_mouse.retina`)
    with torch.no_grad():
        normalised = (torch.from_numpy(pupil)[None] - head.pupil_mean) / head.pupil_std
        shift = head.eye_shift(normalised)[0].numpy() * np.array([frame_shape[1] / 2, frame_shape[0] / 2])
    made = -(shift - shift.mean(0))  # the head's image at p shows the screen at p + shift
    return _number(np.sum(made * true) / np.sum(true ** 2)) if np.any(true) else None


def _readouts(run: Path, data: list[Path], state: dict) -> dict[str, dict]:
    """Per recording the start's retinotopic R² (from the run's state), the median distance (px) of
    the trained readout positions (N, 2), best weights, from the true RF centres (N, 2), and the
    `_eye_shift_gain`."""
    twin, _ = load_run(run)
    figures = {}
    for recording in data:
        head = twin.heads[recording.name]
        position = head.readout.position.detach().cpu().numpy()  # grid_sample (x, y)
        pixels = pixel_positions(position, twin.frame_shape)
        truth = load_truth(recording)
        distance = np.linalg.norm(pixels - truth["rf_center"], axis=1)
        eye_gain = float(truth["eye_gain"][0])  # one eye: the same value for every neuron
        figures[recording.name] = {"readout_start_r2": _number(state.get("readout_start_r2", {}).get(recording.name)),
                                   "readout_position_error_px": _median(distance),
                                   "eye_shift_gain": _eye_shift_gain(head, recording, eye_gain, twin.frame_shape)}
    return figures


def _experiments(url: str, recording: Path, out: Path, progress: bool) -> dict:
    """Tuning and RF experiments on the served clip model of `recording` and on the simulated mouse
    itself, validated against its truth."""
    model, mouse = model_names(recording.name)["clip"], SimulatedTwin.of(recording)
    tuning = run_tuning(url, model, out / "tuning", truth=recording, progress=progress)["validation"]
    rf = run_rf(url, model, out / "rf", truth=recording, progress=progress)["validation"]
    tuning_floor = run_tuning(url, "simulated mouse", out / "mouse" / "tuning", truth=recording, progress=progress,
                              twin=mouse)["validation"]
    rf_floor = run_rf(url, "simulated mouse", out / "mouse" / "rf", truth=recording, progress=progress,
                      twin=mouse)["validation"]
    validations = {"tuning": tuning, "rf": rf, "tuning_floor": tuning_floor, "rf_floor": rf_floor}
    return {**_experiment_figures(validations), **_twin_vs_mouse(out, out / "mouse", load_truth(recording)["osi"]),
            **validations}


def _experiment_figures(validations: dict) -> dict:
    """A recording's figures from its experiments' validation summaries on the twin and on the simulated
    mouse (`tuning`, `rf`, `tuning_floor`, `rf_floor`)."""
    tuning, rf, tuning_floor, rf_floor = (validations[key] for key in ("tuning", "rf", "tuning_floor", "rf_floor"))
    return {"median_orientation_error_deg": _number(tuning["median_orientation_error_deg"]),
            "median_rf_center_error_px": _number(rf["median_center_distance_px"]),
            "orientation_error_floor_deg": _number(tuning_floor["median_orientation_error_deg"]),
            "rf_center_error_floor_px": _number(rf_floor["median_center_distance_px"]),
            # Neurons whose true RF centre is on the screen: off it, the dots show only the near flank.
            "rf_center_error_on_screen_px": _number(rf.get("median_center_distance_on_screen_px")),
            "rf_center_error_on_screen_floor_px": _number(rf_floor.get("median_center_distance_on_screen_px")),
            # The same split of the orientation error (tuned neurons): off screen, the gratings reach the near flank.
            **{f"orientation_error_{where}_screen{suffix}_deg":
               _number(summary.get(f"median_orientation_error_{where}_screen_deg"))
               for where in ("on", "off") for suffix, summary in (("", tuning), ("_floor", tuning_floor))},
            # How selective the twin says each neuron is, against the truth (all neurons, `tuning.validate`).
            **{f"{index}_correlation{suffix}": _number(summary[f"{index}_correlation"])
               for index in ("osi", "dsi") for suffix, summary in (("", tuning), ("_floor", tuning_floor))}}


def _refreshed(entry: dict) -> dict:
    """A member's saved entry with every recording's figures derived again from its experiments'
    validation summaries, and the means again: a figure added to the bench since appears without a rerun."""
    for scores in entry["recordings"].values():
        if "tuning" in scores:
            scores.update(_experiment_figures(scores))
    return _headline(entry)


def _measure(name: str, folder: Path, settings: dict, progress: bool) -> dict:
    """Synthesize, train, evaluate, and (with experiments) export, serve and probe one member → its entry."""
    member, seconds = variant(name), {}
    sizes = {key: settings[key] for key in ("recordings", "neurons", "train_minutes")}
    with _phase(seconds, name, "synthesize", f"{sizes['recordings']} × {sizes['neurons']} neurons, "
                                             f"{sizes['train_minutes']} training minutes"):
        data = synthesize(folder / "data", **sizes, seed=settings["data_seed"], progress=progress, variant=member)
    with _phase(seconds, name, "train", f"{settings['preset']} for {settings['minutes']} min"):
        metrics = train(data, folder / "run", preset=settings["preset"], progress=progress,
                        minutes=settings["minutes"], steps=10**9)
    recordings = {path.name: _scores(metrics[path.name]) for path in data}
    state = json.loads((folder / "run" / "checkpoint" / "state.json").read_text())
    for recording, figures in _readouts(folder / "run", data, state).items():
        recordings[recording].update(figures)
    entry = {"sizes": sizes, "member_sizes": {"neurons": member.neurons, "train_minutes": member.train_minutes},
             "steps": state["step"], "best_step": state["best_step"], "training_minutes": state["elapsed"] / 60,
             "seconds": seconds, "recordings": recordings}
    if not settings["experiments"]:
        return _headline(entry)
    with _phase(seconds, name, "export"):
        export_run(folder / "run", folder / "artifacts")
    return _probe(name, folder, entry, progress)


def _probe(name: str, folder: Path, entry: dict, progress: bool) -> dict:
    """Serve the member's exported twin and run the experiments on each recording → `entry` with their
    figures (any earlier ones replaced)."""
    with _phase(entry["seconds"], name, "serve", "(Triton, loopback)"):
        shutil.rmtree(folder / "models", ignore_errors=True)
        shutil.rmtree(folder / "experiments", ignore_errors=True)
        write_repository(folder / "artifacts", folder / "models")
        server = TritonServer(folder / "models", Ports.free(), log_path=folder / "tritonserver.log")
    with server, _phase(entry["seconds"], name, "experiments", "tuning and rf"):
        for recording, scores in entry["recordings"].items():
            scores.update(_experiments(server.url, folder / "data" / recording,
                                       folder / "experiments" / recording, progress))
    return _headline(entry)


def _headline(entry: dict) -> dict:
    """`entry` with the mean over its recordings of every `HEADLINE` figure."""
    return {**entry, **{key: _mean(r.get(key) for r in entry["recordings"].values()) for key in HEADLINE}}


def _member_settings(settings: dict, name: str) -> dict:
    """`settings` with `OWN_TRAIN_MINUTES` replaced by the member's own."""
    if settings["train_minutes"] != OWN_TRAIN_MINUTES:
        return settings
    return {**settings, "train_minutes": variant(name).train_minutes}


def _member(name: str, folder: Path, settings: dict, progress: bool) -> dict:
    """The member's entry: reused from `folder/member.json` if measured with the same settings (with
    the experiments rerun on its kept twin if they changed since, `EXPERIMENTS`), else measured afresh
    in a rebuilt `folder`."""
    done = folder / "member.json"
    saved = json.loads(done.read_text()) if done.is_file() else {}
    if saved.get("settings") == settings:
        if not settings["experiments"] or saved.get("experiments") == EXPERIMENTS:
            print(f"[{name}] reusing {done}", file=sys.stderr, flush=True)
            return _refreshed(saved["result"])
        if (folder / "artifacts").is_dir():
            print(f"[{name}] reusing the trained twin, the experiments changed", file=sys.stderr, flush=True)
            result = _probe(name, folder, saved["result"], progress)
            write_results({"settings": settings, "experiments": EXPERIMENTS, "result": result}, done)
            return result
    shutil.rmtree(folder, ignore_errors=True)
    result = _measure(name, folder, settings, progress)
    write_results({"settings": settings, "experiments": EXPERIMENTS, "result": result}, done)
    return result


def _holds(values: list, test) -> bool | None:
    """Whether `test` holds on every value; None when any is missing."""
    return None if not values or any(v is None for v in values) else all(test(v) for v in values)


def _largest(values: list) -> float | None:
    return max((v for v in values if v is not None), default=None)


def summarize(members: dict[str, dict]) -> dict:
    """Worst and best member by fraction of the ceiling, the spread, the worst errors, the targets."""
    column = {key: [m[key] for m in members.values()]
              for key in ("fraction_of_ceiling", "median_orientation_error_deg", "median_rf_center_error_px")}
    fractions = {name: m["fraction_of_ceiling"] for name, m in members.items() if m["fraction_of_ceiling"] is not None}
    worst, best = (min(fractions, key=fractions.get), max(fractions, key=fractions.get)) if fractions else (None, None)
    spread = fractions[best] - fractions[worst] if fractions else None
    met = {"fraction_of_ceiling_on_every_member": _holds(column["fraction_of_ceiling"],
                                                         lambda v: v >= TARGETS["fraction_of_ceiling_min"]),
           "worst_within_spread_of_best": _holds([spread], lambda v: v <= TARGETS["fraction_of_ceiling_spread_max"]),
           "orientation_error": _holds(column["median_orientation_error_deg"],
                                       lambda v: v <= TARGETS["orientation_error_deg_max"]),
           "rf_center_error": _holds(column["median_rf_center_error_px"],
                                     lambda v: v <= TARGETS["rf_center_error_px_max"])}
    return {"worst_member": worst, "worst_fraction_of_ceiling": fractions.get(worst),
            "best_member": best, "best_fraction_of_ceiling": fractions.get(best), "fraction_of_ceiling_spread": spread,
            "worst_orientation_error_deg": _largest(column["median_orientation_error_deg"]),
            "worst_rf_center_error_px": _largest(column["median_rf_center_error_px"]),
            **{f"worst_{key}": _largest([m.get(key) for m in members.values()])
               for key in ("orientation_error_floor_deg", "rf_center_error_floor_px",
                           "orientation_error_vs_mouse_deg", "rf_center_error_vs_mouse_px")},
            "targets": TARGETS, "targets_met": met}


def lines(results: dict) -> list[str]:
    """One summary line per member, then the spread and the targets."""
    def show(value, unit=""):
        return "n/a" if value is None else f"{value:.2f}{unit}"

    rows = [f"{name:<12} fraction of ceiling {show(m['fraction_of_ceiling'])} (oracle "
            f"{show(m['oracle_single_trial_correlation'])} / {show(m['ceiling_single_trial_correlation'])})  "
            f"orientation error {show(m['median_orientation_error_deg'], '°')} (floor "
            f"{show(m.get('orientation_error_floor_deg'), '°')}; on screen "
            f"{show(m.get('orientation_error_on_screen_deg'), '°')}, off screen "
            f"{show(m.get('orientation_error_off_screen_deg'), '°')})  RF error {show(m['median_rf_center_error_px'], ' px')} "
            f"(floor {show(m.get('rf_center_error_floor_px'), ' px')}; on screen "
            f"{show(m.get('rf_center_error_on_screen_px'), ' px')}, floor "
            f"{show(m.get('rf_center_error_on_screen_floor_px'), ' px')})  readout "
            f"{show(m.get('readout_position_error_px'), ' px')} from the RF centres  OSI r "
            f"{show(m.get('osi_correlation'))} (floor {show(m.get('osi_correlation_floor'))}), DSI r "
            f"{show(m.get('dsi_correlation'))} (floor {show(m.get('dsi_correlation_floor'))})  eye shift gain "
            f"{show(m.get('eye_shift_gain'))}  {m['steps']} steps on {_data_minutes(m)} minutes of training movies"
            for name, m in results["members"].items()]
    summary, verdict = results["summary"], {None: "n/a", True: "yes", False: "NO"}
    checks = [(f"fraction ≥ {TARGETS['fraction_of_ceiling_min']} on every member",
               "fraction_of_ceiling_on_every_member"),
              (f"worst within {TARGETS['fraction_of_ceiling_spread_max']} of best", "worst_within_spread_of_best"),
              (f"orientation error ≤ {TARGETS['orientation_error_deg_max']:.0f}°", "orientation_error"),
              (f"RF error ≤ {TARGETS['rf_center_error_px_max']:.0f} px", "rf_center_error")]
    return rows + [f"worst {summary['worst_member']}, best {summary['best_member']}, spread "
                   f"{show(summary['fraction_of_ceiling_spread'])}",
                   "targets: " + ", ".join(f"{label} {verdict[summary['targets_met'][key]]}" for label, key in checks)]


def _data_minutes(member: dict) -> str:
    """The minutes of training movies a member's twin was trained on, as text ("?" where not recorded)."""
    minutes = member.get("sizes", {}).get("train_minutes")
    return "?" if minutes is None else f"{minutes:g}"


def _values(results: dict, key: str) -> list[float]:
    """`key` of every member in order, NaN where missing."""
    return [np.nan if m.get(key) is None else m[key] for m in results["members"].values()]


def plot(results: dict, path: Path) -> None:
    """Per member: fraction of the ceiling, orientation error and RF-centre error, with the targets and
    (black ticks) the errors of the same experiments on the simulated mouse; then the OSI and DSI
    correlations with the truth, twin (bars) and simulated mouse (ticks)."""
    plt = pyplot()
    names, ticks = list(results["members"]), np.arange(len(results["members"]))
    panels = [("fraction_of_ceiling", "fraction of the ceiling\n(oracle tier)", TARGETS["fraction_of_ceiling_min"]),
              ("median_orientation_error_deg", "median orientation error (°)\nneurons with true OSI > 0.3",
               TARGETS["orientation_error_deg_max"]),
              ("median_rf_center_error_px", "median RF-centre error (px)\nneurons with a clear RF",
               TARGETS["rf_center_error_px_max"])]
    figure, axes = plt.subplots(1, 4, figsize=(max(13.0, 4 * (1.5 + 0.6 * len(names))), 4.2), constrained_layout=True)
    floors = {"median_orientation_error_deg": "orientation_error_floor_deg",
              "median_rf_center_error_px": "rf_center_error_floor_px"}
    mouse = dict(marker="_", s=300, color="k", zorder=3, label="same experiment on the simulated mouse")
    for axis, (key, label, target) in zip(axes, panels):
        axis.bar(ticks, _values(results, key))
        if key in floors:
            axis.scatter(ticks, _values(results, floors[key]), **mouse)
            axis.legend(fontsize=7, loc="upper left")
        axis.axhline(target, color="C3", linestyle="--", linewidth=1)
        axis.set_title(label, fontsize=9)
    selectivity = axes[3]
    for shift, index in ((-0.2, "osi"), (0.2, "dsi")):
        selectivity.bar(ticks + shift, _values(results, f"{index}_correlation"), width=0.4, label=f"twin {index.upper()}")
        selectivity.scatter(ticks + shift, _values(results, f"{index}_correlation_floor"), **{**mouse, "s": 120, "label": None})
    selectivity.axhline(0, color="0.5", linewidth=0.8)
    selectivity.legend(fontsize=7, loc="lower left")
    selectivity.set_title("OSI and DSI vs the truth (r over neurons)\nticks: the simulated mouse", fontsize=9)
    for axis in axes:
        axis.set_xticks(ticks, [f"{name} ({_data_minutes(m)} min)" for name, m in results["members"].items()],
                        rotation=45, ha="right")
    figure.suptitle(f"{results['config']['preset']}, {results['config']['minutes']} min of training per member "
                    f"(in brackets: minutes of training movies; target dashed)")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_bench(out: str | Path = f"{RESULTS}/fidelity.json", members: list[str] | None = None, preset: str = "small",
              minutes: float = 15.0, neurons: int = 500, train_minutes: float | str = 10.0, recordings: int = 1,
              workdir: str | Path | None = None, experiments: bool = True, progress: bool = True) -> dict:
    """Measure every member in turn (the module's docstring) → results, rewritten to `out` after each
    member, with the plot beside it (.png) at the end. `train_minutes`: minutes of training movies per
    recording, or `OWN_TRAIN_MINUTES`. An unknown member name is refused before any work."""
    members = list(dict.fromkeys(members or default_members()))
    for name in members:
        variant(name)  # ValueError naming the accepted forms
    if min(neurons, recordings) < 1 or minutes <= 0 or (train_minutes != OWN_TRAIN_MINUTES and train_minutes <= 0):
        raise ValueError(f"--neurons and --recordings must be at least 1, --minutes positive, --train-minutes "
                         f"positive or {OWN_TRAIN_MINUTES!r}")
    out = Path(out)
    recipe = find_preset(preset)  # what the preset means now: a member trained under another recipe is retrained
    settings = json.loads(json.dumps({
        "preset": preset, "minutes": minutes, "neurons": neurons, "train_minutes": train_minutes,
        "recordings": recordings, "experiments": experiments, "data_seed": DATA_SEED,
        "twin": twin_config(recipe.model_config()),  # as a run records it (the heads' settings too)
        "trainer": asdict(recipe.train)}))  # as member.json holds it
    results = {"config": {**settings, "members": members}, "machine": machine(), "members": {}, "summary": None}
    with nullcontext(workdir) if workdir else tempfile.TemporaryDirectory(prefix="twinserve-fidelity-") as folder:
        for name in members:
            results["members"][name] = _member(name, Path(folder) / name, _member_settings(settings, name), progress)
            results["summary"] = summarize(results["members"])
            write_results(results, out)
    plot(results, out.with_suffix(".png"))
    return results
