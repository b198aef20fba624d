"""Per-neuron fidelity against the virtual mouse's ground truth: which neurons does the twin miss?

For every recording with a ``truth/neurons/`` folder, the neurons are binned by each true property
(every (N,) array there, whatever its name, plus two derived ones) and each bin reports how close
the twin comes to the ceiling. Real recordings have no truth and are left out.

Table, per recording (JSON-serialisable; NaN is written as null)::

    {"tier": "oracle", "neurons": N, "with_ceiling": n,
     "properties": {<property>: {"kind": "quantile" | "category",
                                 "bins": [{"label", "count", "with_ceiling", "median_fraction_of_ceiling",
                                           "median_correlation", "center" | "value", "low", "high"}, ...]}}}

``fraction_of_ceiling`` = single-trial correlation / ceiling single-trial correlation, per neuron,
only where the ceiling exceeds `MIN_CEILING` (``with_ceiling`` counts those neurons). Continuous
properties get quantile bins (``low``/``high`` edges, ``center`` = median of the property in the bin);
bool, string and few-valued numeric properties get one bin per ``value``. Derived properties:
``rf_edge_distance`` (px from ``rf_center`` to the nearest screen edge, negative = outside the
screen) and ``ceiling`` itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import write_json

MIN_CEILING = 0.05
QUANTILE_BINS = 4
MAX_CATEGORIES = 6  # a numeric property with at most this many distinct values gets one bin per value
VIRTUAL_MOUSE_FRAME = (36, 64)  # (H, W), when the folder itself does not tell
NOT_PROPERTIES = {"tuning_directions_deg"}  # 1-D truth arrays that are axes, not one value per neuron


def _frame_shape(recording, folder: Path) -> tuple[int, int]:
    """(H, W) of the screen: the `Recording`'s, else a video header, else the truth's filters' header."""
    if hasattr(recording, "frame_shape"):
        return tuple(recording.frame_shape)
    video = min((folder / "data" / "videos").glob("*.npy"), default=None)
    if video is not None:
        return tuple(np.load(video, mmap_mode="r").shape[:2])
    filters = folder / "truth" / "neurons" / "spatial_filters.npy"
    if filters.is_file():
        return tuple(np.load(filters, mmap_mode="r").shape[-2:])
    return VIRTUAL_MOUSE_FRAME


def edge_distance(rf_center: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Distance (px) of each [x, y] in rf_center (N, 2) to the nearest edge of an (H, W) screen → (N,).

    Pixel centres sit at integer coordinates, so the screen spans [−0.5, W − 0.5] × [−0.5, H − 0.5];
    a centre outside it gets minus how far it lies beyond the farthest-crossed edge.
    """
    height, width = frame_shape
    x, y = rf_center[:, 0] + 0.5, rf_center[:, 1] + 0.5
    return np.minimum.reduce([x, width - x, y, height - y]).astype(np.float64)


def true_properties(folder: Path, neurons: int, frame_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every (N,) array of ``truth/neurons`` plus ``rf_edge_distance``; others (N, k) are left out."""
    properties = {}
    for path in sorted((folder / "truth" / "neurons").glob("*.npy")):
        if path.stem in NOT_PROPERTIES:
            continue
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError):  # pickled objects or an unreadable file: not a property
            continue
        if path.stem == "rf_center" and array.shape == (neurons, 2):
            properties["rf_edge_distance"] = edge_distance(np.asarray(array, np.float64), frame_shape)
        elif array.shape == (neurons,) and array.dtype.kind in "biufUS":
            properties[path.stem] = np.asarray(array)
    return properties


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def _plain(value):
    """A numpy scalar as a JSON value (NaN → None)."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def bin_property(values: np.ndarray, correlation: np.ndarray, fraction: np.ndarray,
                 bins: int = QUANTILE_BINS) -> dict | None:
    """Bins of one property (N,) with the medians of correlation (N,) and fraction (N,; NaN = no ceiling).

    None when the property takes a single value (nothing to compare).
    """
    kind = values.dtype.kind
    if kind == "S":
        values, kind = values.astype(str), "U"
    if kind == "f":
        keep = np.isfinite(values)
        values, correlation, fraction = values[keep], correlation[keep], fraction[keep]
    distinct = np.unique(values)
    if len(distinct) < 2:
        return None
    if kind in "bUS" or len(distinct) <= MAX_CATEGORIES:
        labels = np.searchsorted(distinct, values)
        described = [{"label": str(_plain(v)), "value": _plain(v)} for v in distinct]
        result = {"kind": "category", "bins": described}
    else:
        # Edges are data values (inverted CDF), so no bin is empty even with ties.
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1), method="inverted_cdf"))
        labels = np.searchsorted(edges[1:-1], values, side="right")
        described = [{"label": f"[{low:.3g}, {high:.3g}{']' if i == len(edges) - 2 else ')'}",
                      "low": float(low), "high": float(high)} for i, (low, high) in enumerate(zip(edges, edges[1:]))]
        for index, entry in enumerate(described):
            entry["center"] = float(np.median(values[labels == index]))
        result = {"kind": "quantile", "bins": described}
    for index, entry in enumerate(described):
        inside = labels == index
        entry.update(count=int(inside.sum()), with_ceiling=int(np.isfinite(fraction[inside]).sum()),
                     median_fraction_of_ceiling=_median(fraction[inside]),
                     median_correlation=_median(correlation[inside]))
    return result


def fidelity_table(per_neuron, recordings, tier: str = "oracle", bins: int = QUANTILE_BINS) -> dict:
    """Per recording with truth, its neurons binned by each true property (see the module docstring).

    per_neuron: mapping ``"<recording>/<tier>/<metric>" → (N,)`` (the run's metrics_per_neuron.npz);
    recordings: `Recording` objects or their folders. Recordings without ``truth/neurons`` or without
    ``<rec>/<tier>/single_trial_correlation`` are left out, so the table may be empty. Raises ValueError
    when a recording's truth has no array with one row per neuron of the run (not the run's recording).
    """
    table = {}
    for recording in recordings:
        folder = Path(getattr(recording, "path", recording))
        name = folder.name
        key = f"{name}/{tier}/single_trial_correlation"
        if not (folder / "truth" / "neurons").is_dir() or key not in per_neuron:
            continue
        correlation = np.asarray(per_neuron[key], np.float64)
        neurons = len(correlation)
        ceiling_key = f"{name}/{tier}/ceiling_single_trial_correlation"
        ceiling = np.asarray(per_neuron[ceiling_key], np.float64) if ceiling_key in per_neuron else None
        properties = true_properties(folder, neurons, _frame_shape(recording, folder))
        if not properties:
            raise ValueError(f"{folder / 'truth/neurons'}: no ({neurons},) arrays, but the run has {neurons} "
                             f"neurons for {name}; are these the recordings the run was trained on?")
        fraction = np.full(neurons, np.nan)
        if ceiling is not None:
            properties["ceiling"] = ceiling
            valid = np.isfinite(ceiling) & (ceiling > MIN_CEILING)
            fraction[valid] = correlation[valid] / ceiling[valid]
        binned = {p: bin_property(v, correlation, fraction, bins) for p, v in properties.items()}
        table[name] = {"tier": tier, "neurons": neurons, "with_ceiling": int(np.isfinite(fraction).sum()),
                       "properties": {p: b for p, b in binned.items() if b is not None}}
    return table


def _categories(binned: list[dict | None]) -> list[str]:
    """Labels of the category bins of one property over all recordings, ordered by value."""
    values = {b["label"]: b["value"] for entry in binned if entry for b in entry["bins"] if "value" in b}
    try:
        return sorted(values, key=values.get)
    except TypeError:  # values of mixed types: first-seen order
        return list(values)


def plot_fidelity(table: dict, path: Path) -> None:
    """One panel per property: median fraction of ceiling per bin, one line per recording; a PNG.

    Quantile bins sit at their median property value, categories at one position per value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({p for entry in table.values() for p in entry["properties"]})
    columns = min(5, max(1, len(names)))
    rows = max(1, -(-len(names) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows),
                                 sharey=True, squeeze=False)
    for axis, name in zip(axes.flat, names):
        categories = _categories([entry["properties"].get(name) for entry in table.values()])
        for recording, entry in table.items():
            binned = entry["properties"].get(name)
            if binned is None:
                continue
            x = [b["center"] if "center" in b else categories.index(b["label"]) for b in binned["bins"]]
            y = [np.nan if b["median_fraction_of_ceiling"] is None else b["median_fraction_of_ceiling"]
                 for b in binned["bins"]]
            axis.plot(x, y, marker="o", label=recording)
        if categories:
            axis.set_xticks(range(len(categories)), categories, fontsize=7)
        axis.set_title(name, fontsize=9)
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("fraction of ceiling", fontsize=8)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    if names:
        axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_fidelity(out: str | Path, recordings, tier: str = "oracle") -> dict | None:
    """Read ``out/metrics_per_neuron.npz``; where a recording has truth, write ``out/fidelity.json`` and
    ``out/fidelity.png`` and return the table; else write nothing and return None."""
    out = Path(out)
    with np.load(out / "metrics_per_neuron.npz") as arrays:
        table = fidelity_table(dict(arrays), recordings, tier)
    if not table:
        return None
    write_json(out / "fidelity.json", table)
    plot_fidelity(table, out / "fidelity.png")
    return table
