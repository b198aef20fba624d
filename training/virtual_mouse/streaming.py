"""Reductions over rows that arrive block by block, bit-identical to numpy's reductions in memory.

numpy's ``mean(axis=0)`` / ``var(axis=0)`` of a C-ordered ``(F, N)`` array add its rows one after
another into an ``(N,)`` accumulator (no pairwise summation across rows), so feeding the same rows in
the same order, block by block, gives the same bits without ever holding all ``F`` rows. Each column
is reduced on its own, so statistics of a block of columns are those columns of the whole.
"""
import numpy as np


class ColumnSum:
    """Σ over the rows of blocks ``(F_i, ...)`` fed with ``add``, in numpy's ``sum(axis=0)`` order."""

    def __init__(self):
        self.total, self.rows = None, 0

    def add(self, block):
        if len(block) == 0:
            return
        self.rows += len(block)
        rows = block if self.total is None else np.concatenate([self.total[None], block])
        self.total = np.add.reduce(rows, axis=0)

    def mean(self):
        """``(...)``: as ``np.mean(all rows, axis=0)``."""
        if self.total is None:
            raise ValueError("the mean of no rows")
        return self.total / self.rows


def column_variance(blocks, mean):
    """``var(axis=0)`` of the rows of ``blocks`` (an iterable of ``(F_i, N)``) whose mean is ``mean (N,)``
    (``ColumnSum.mean()`` of the same blocks), as numpy computes it: the mean of squared deviations."""
    squares = ColumnSum()
    for block in blocks:
        deviation = block - mean
        squares.add(np.multiply(deviation, deviation, out=deviation))
    return squares.total / squares.rows


def channel_blocks(channels, rows, block_bytes):
    """Column ranges ``[(start, stop), ...]`` over ``channels`` columns, each holding at most about
    ``block_bytes`` of float64 for ``rows`` rows, and at least two columns (a single column would be
    reduced by numpy in another order)."""
    width = max(2, int(block_bytes // (8 * max(rows, 1))))
    count = max(1, -(-channels // width))
    edges = np.linspace(0, channels, count + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def file_statistics(paths, lengths, functions, block_bytes=64 * 2**20):
    """Statistics over time of time-last ``.npy`` files, a block of channels at a time.

    ``paths``: files of shape ``(..., T)`` (same channel shape ``C``), ``lengths``: how many leading
    frames of each to use. Returns ``{name: (C...) float32}``: ``function(values, axis=0)`` with
    ``values (Σ lengths, C...)`` float64, the frames of all files in order, as if it were in memory.
    """
    shape = np.load(paths[0], mmap_mode="r").shape[:-1]
    channels = int(np.prod(shape))
    out = {name: np.empty(channels, np.float32) for name in functions}
    for start, stop in channel_blocks(channels, sum(lengths), block_bytes):
        parts = [np.load(p, mmap_mode="r").reshape(channels, -1)[start:stop, :n].T for p, n in zip(paths, lengths)]
        values = np.concatenate(parts).astype(np.float64)
        for name, function in functions.items():
            out[name][start:stop] = function(values, axis=0)
    return {name: array.reshape(shape) for name, array in out.items()}
