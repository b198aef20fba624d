"""The virtual mouse: a simulator of mouse V1 recordings written in the SENSORIUM 2023 on-disk layout.

Modules, one idea each: ``stimuli`` (movies), ``behavior`` (running, pupil, eye position), ``retina``
(eye-position shifts), ``neurons`` (receptive fields → expected rates), ``tuning`` (true tuning),
``imaging`` (spikes → calcium → 8 Hz → causal 30 Hz responses), ``plan`` (tiers and trials),
``truth`` (ground-truth files), ``recording`` (one recording, simulated and written trial by trial),
``streaming`` (reductions over trials fed one at a time) and ``writer`` (``synthesize``: everything
to disk).
"""
from .writer import synthesize

__all__ = ["synthesize"]
