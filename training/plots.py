"""Figures of the trainer: the training curve, and validation curves of several runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curve(history: list[dict], path: Path) -> None:
    """Training loss and validation correlation against optimizer steps, saved as a PNG."""
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    loss_axis.plot(steps, [h["loss"] for h in history], marker=".")
    loss_axis.set(xlabel="step", ylabel="Poisson loss (train)", title="training loss")
    score_axis.plot(steps, [h["validation"] for h in history], marker=".", color="tab:green")
    score_axis.set(xlabel="step", ylabel="single-trial correlation", title="validation (oracle)")
    for axis in (loss_axis, score_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_traces(recorded, predicted, expected, neurons, path: Path, title: str = "") -> None:
    """Recorded, predicted and (if known) true expected responses over one trial for a few neurons.

    recorded, predicted, expected: (T, N) arrays (expected may be None); neurons: column indices.
    """
    figure, axes = plt.subplots(len(neurons), 1, figsize=(9, 1.6 * len(neurons)), sharex=True, squeeze=False)
    seconds = [t / 30 for t in range(len(recorded))]
    for axis, neuron in zip(axes[:, 0], neurons):
        axis.plot(seconds, recorded[:, neuron], color="0.6", lw=0.8, label="recorded")
        if expected is not None:
            axis.plot(seconds, expected[:, neuron], color="tab:green", lw=1, label="true expected")
        axis.plot(seconds, predicted[:, neuron], color="tab:blue", lw=1.2, label="twin")
        axis.set_ylabel(f"neuron {neuron}", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[0, 0].set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("time (s)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_validation_curves(results: dict, path: Path) -> None:
    """Validation correlation against training wall time, one line per preset."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for preset, result in results["presets"].items():
        history = result["validation_history"]
        axis.plot([h["minutes"] for h in history], [h["validation"] for h in history], marker=".",
                  label=f"{preset} ({result['core']}): oracle {result['oracle_single_trial_correlation']:.3f}")
    axis.set_xlabel("training wall time (min)")
    axis.set_ylabel("validation single-trial correlation")
    axis.set_title(f"Cores at equal wall time ({results['minutes_per_preset']:g} min each)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
