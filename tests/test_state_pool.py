"""The stream model's state pool (`serving.state_pool`): slots, refusals, and in-place vs staged steps."""

import numpy as np
import pytest

from twinserve.serving.limits import Limits, flag
from twinserve.serving.state_pool import PoolError, StatePool

SHAPES = [(2, 3), (4,)]


def _step(pool: StatePool, sequences: list[int], frames: dict[int, float]) -> bool:
    """One step of a toy graph (next state = state + the stream's frame value) → whether it ran in place."""
    slots = sorted(pool.slot(s) for s in sequences)
    by_slot = {pool.slot(s): s for s in sequences}
    buffers = pool.step_buffers(slots)
    in_place = all(np.shares_memory(array, pool.states[i]) for i, array in enumerate(buffers.inputs))
    for inputs, outputs in zip(buffers.inputs, buffers.outputs):
        values = np.array([frames[by_slot[s]] for s in slots], np.float32).reshape(-1, *[1] * (inputs.ndim - 1))
        outputs[...] = inputs + values
    buffers.finish()
    return in_place


def _state(pool: StatePool, sequence: int) -> list[np.ndarray]:
    slot = pool.slot(sequence)
    return [state[slot] for state in pool.states]


def test_streams_keep_their_own_state_in_place_or_staged():
    pool, rng = StatePool(SHAPES, slots=4), np.random.default_rng(0)
    totals = {}
    for sequence in (11, 12, 13):
        pool.open(sequence, now=0.0)
        totals[sequence] = 0.0
    ran_in_place = []
    for _ in range(40):  # random subsets: consecutive slots are read in place, others gathered
        batch = [s for s in totals if rng.random() < 0.6] or [min(totals)]
        frames = {s: float(rng.integers(1, 5)) for s in batch}
        ran_in_place.append(_step(pool, batch, frames))
        for s in batch:
            totals[s] += frames[s]
        if rng.random() < 0.1:  # a stream ends and a new one takes the lowest free slot, from zero
            gone = sorted(totals)[0]
            pool.close(gone)
            del totals[gone]
            new = max(totals) + 1
            pool.open(new, now=0.0)
            totals[new] = 0.0
    assert any(ran_in_place) and not all(ran_in_place)  # both paths were taken
    for sequence, total in totals.items():
        for array in _state(pool, sequence):
            np.testing.assert_array_equal(array, np.full_like(array, total))


def test_live_ids_full_pools_and_unknown_ids_are_refused_with_what_to_do():
    pool = StatePool(SHAPES, slots=2)
    pool.open(1, now=0.0)
    with pytest.raises(PoolError, match="already open: END it"):
        pool.open(1, now=0.0)
    pool.open(2, now=5.0)
    with pytest.raises(PoolError, match="all 2 stream slots are in use.*--max-streams"):
        pool.open(3, now=0.0)
    with pytest.raises(PoolError, match="never started"):
        pool.slot(3)
    assert pool.idle(now=12.0, timeout=10.0) == [1]
    pool.close(1)
    assert pool.open(3, now=0.0) == 0 and len(pool) == 2  # the freed slot is reused
    pool.close(99)  # unknown: nothing happens


def test_the_pool_size_is_bounded_by_a_flag_named_in_the_error():
    per_slot = StatePool.nbytes(SHAPES, 1)
    assert per_slot == 3 * 4 * (6 + 4)  # the pool and its two staging arrays, float32
    Limits(max_streams=10, max_state_bytes=10 * per_slot).check_pool(per_slot)
    with pytest.raises(ValueError, match="--max-state-bytes.*lower --max-streams or raise --max-state-bytes"):
        Limits(max_streams=11, max_state_bytes=10 * per_slot).check_pool(per_slot)
    with pytest.raises(ValueError, match="--max-queue must be positive"):
        Limits(max_queue=0)
    assert flag("idle_timeout_s") == "--idle-timeout" and flag("max_request_bytes") == "--max-request-bytes"
