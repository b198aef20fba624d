"""Figures of the trainer: the training curve."""

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
