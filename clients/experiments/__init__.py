"""In-silico experiments on a served twin: parametric tuning, receptive-field mapping."""
