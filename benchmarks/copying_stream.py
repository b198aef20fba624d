"""The stream model before the state pool, kept only so `twin bench stream` can measure both side by side.

Every step concatenates the states of the batched streams into new arrays, runs the step graph,
and copies each stream's rows of the next state out again: two copies and fresh allocations of
every batched stream's whole state per frame (10 MB per `base` stream), and no bound on how many
streams hold state. Served beside the pooled model by `benchmarks.served.add_copying_stream_model`
(this module imports Triton's backend utilities: it runs inside the server only).
"""

from __future__ import annotations

import numpy as np

from twinserve.contract import RESPONSES, STEP_INPUTS
from twinserve.serving import models
from twinserve.serving.repository import CORRID, END, START


class CopyingStreamModel(models.StreamModel):
    def initialize(self, args) -> None:
        super().initialize(args)
        self.shapes, self.pool = self.pool.shapes, None  # states live in `self.states` instead
        self.states: dict[int, list[np.ndarray]] = {}  # sequence id → state tensors (1, ...)

    def _step(self, requests, indices: list[int], responses: list, now: float) -> None:
        frames, sequences, ends = [], [], []
        for i in indices:
            request = requests[i]
            sequence, end = int(models._input(request, CORRID).flat[0]), bool(models._input(request, END).flat[0])
            if models._input(request, START).flat[0]:
                self.states[sequence] = [np.zeros((1, *s), np.float32) for s in self.shapes]
            try:
                if sequence not in self.states:
                    raise models.BadRequest(f"sequence {sequence} was never started")
                frames.append(models._finite(models._received(request, STEP_INPUTS, self.max_request_bytes),
                                             STEP_INPUTS))
            except models.BadRequest as error:
                responses[i] = models._error(str(error))
                if end:
                    self.states.pop(sequence, None)
                continue
            sequences.append((i, sequence))
            ends.append(end)
        if not sequences:
            return
        feeds = {name: np.concatenate(parts) for name, parts in zip(STEP_INPUTS, zip(*frames))}
        for layer, name in enumerate(self.state_inputs):
            feeds[name] = np.concatenate([self.states[s][layer] for _, s in sequences])
        results = self.session.run([RESPONSES, *self.state_outputs], feeds)
        for row, ((i, sequence), end) in enumerate(zip(sequences, ends)):
            responses[i] = models._responses(results[0][row:row + 1])
            if end:
                self.states.pop(sequence, None)
            else:
                self.states[sequence] = [r[row:row + 1].copy() for r in results[1:]]

    def _evict_idle(self) -> None:
        while not self.stopping.wait(1.0):
            pass  # the old model freed idle streams only when a request came; the benchmark ends every stream

    def finalize(self) -> None:
        self.stopping.set()
        self.states.clear()
