"""Sensorium-format data, the virtual mouse, the twin model, metrics and the trainer."""
