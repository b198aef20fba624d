"""From screen to retina: contrast units and eye-position shifts.

The retinal image is the screen image translated globally, frame by frame, by
``shift(t) = eye_gain * (pupil_center(t) − eye_center)`` pixels, with pupil x moving the image along
columns and pupil y along rows: ``retina(row, col) = screen(row − shift_y, col − shift_x)``.
Sub-pixel shifts use bilinear interpolation; what comes in from beyond the screen edge is grey.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .stimuli import GREY


def contrast(video):
    """Screen values ``(..., H, W)`` in 0..255 → contrast ``(value − 128) / 128`` (grey = 0), float32."""
    return ((np.asarray(video, dtype=np.float32) - GREY) / GREY).astype(np.float32)


def eye_shift(pupil_center, eye_center, eye_gain):
    """Retinal image shift ``(..., T, 2)`` [columns, rows] in pixels from pupil centre ``(..., T, 2)``."""
    return eye_gain * (np.asarray(pupil_center, dtype=np.float32) - eye_center)


def shift_frames(frames, shift):
    """Translate each frame of ``frames (T, H, W)`` by ``shift (T, 2)`` = [dx, dy] pixels.

    ``out[t, r, c] = frames[t, r − dy, c − dx]`` with bilinear interpolation and zeros (grey, in
    contrast units) outside the frame. Returns float32 ``(T, H, W)``.
    """
    n, height, width = frames.shape
    pad = int(np.ceil(np.abs(shift).max(initial=0.0))) + 1
    padded = np.pad(frames.astype(np.float32, copy=False), ((0, 0), (pad, pad), (pad, pad)))
    source = pad - np.asarray(shift, dtype=np.float64)  # (T, 2) top-left source position [col, row]
    start = np.floor(source).astype(int)
    fc, fr = (source - start).astype(np.float32).T[:, :, None, None]
    windows = sliding_window_view(padded, (height + 1, width + 1), axis=(1, 2))
    block = windows[np.arange(n), start[:, 1], start[:, 0]]  # (T, H + 1, W + 1)
    top = block[:, :-1, :-1] * (1 - fc) + block[:, :-1, 1:] * fc
    bottom = block[:, 1:, :-1] * (1 - fc) + block[:, 1:, 1:] * fc
    return top * (1 - fr) + bottom * fr
