"""matplotlib for the clients, headless: figures are written to files, never shown."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
