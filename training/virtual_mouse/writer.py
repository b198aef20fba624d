"""Simulate virtual-mouse recordings and write them in the SENSORIUM 2023 on-disk layout.

    <out>/virtual-mouse-<i>/data/videos/<trial>.npy        float32 (36, 64, T)
                           data/responses/<trial>.npy     float32 (N, T)
                           data/behavior/<trial>.npy      float32 (2, T)  [pupil size, running speed]
                           data/pupil_center/<trial>.npy  float32 (2, T)  [x, y]
                           meta/trials/tiers.npy          str (n_trials,)
                           meta/neurons/unit_ids.npy, cell_motor_coordinates.npy
                           meta/statistics/<key>/all/{mean,std,min,max,median}.npy  (train tier, repeated along T)
                           truth/...                      ground truth (see ``truth.py``)

Time is the last axis on disk; short trials are NaN-padded at the end. Internally everything is
time-first and transposed once, when written. Each recording is simulated and written trial by trial
(``recording``), so memory does not grow with its length; ``workers`` write several at once, one
process each.
"""
import multiprocessing
import pathlib
import shutil

from tqdm import tqdm

from .family import Variant
from .recording import EXPECTED, Job, write_recording
from .stimuli import HEIGHT, WIDTH

# Recording sizes by name: "sensorium" is one SENSORIUM 2023 recording (paper 000, sec. 3): about
# 7,900 neurons and 60 minutes (108,000 frames) of training video; neuron counts differ by 1% per recording.
SCALES = {"sensorium": {"neurons": 7900, "train_minutes": 60.0, "neuron_step": 0.01}}


def recording_bytes(job):
    """``(written, scratch)``: bytes of the recording's files (about) and of its scratch array."""
    frames, neurons = job.n_trials * job.trial_frames, job.n_neurons
    expected = {"all": job.n_trials, "test": job.n_trials - job.train_trials, "none": 0}[job.expected]
    written = 4 * (frames * (neurons + HEIGHT * WIDTH + 4) + expected * job.trial_frames * neurons)
    truth = 4 * neurons * (2 * HEIGHT * WIDTH + 100)
    return written + truth, 4 * frames * neurons


def check_space(out, jobs, workers):
    """A clear error, before any work, when the recordings would not fit on ``out``'s disk."""
    sizes = [recording_bytes(job) for job in jobs]
    needed = sum(written for written, _ in sizes) + sum(sorted(s for _, s in sizes)[-workers:])
    existing = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise ValueError(f"{out}: these recordings need about {needed / 1e9:.1f} GB (with scratch space), but only "
                         f"{free / 1e9:.1f} GB are free; write fewer recordings or minutes, or --expected test|none")


def synthesize(out, recordings=2, neurons=300, train_minutes=6.0, seed=0, trial_frames=300, repeats=10,
               oracle_clips=6, test_clips=2, progress=True, variant=Variant(), neuron_step=0.15, expected="all",
               workers=1):
    """Write ``recordings`` virtual-mouse folders under ``out`` and return their paths.

    ``variant`` (``family.Variant``): the distributions every generative choice is drawn from; the
    default is the original virtual mouse, ``family.draw_variant(k)`` member k of the family.
    Recording i has ``round(neurons * (1 + neuron_step i))`` neurons, its own behaviour and its own
    training clips; ``int(train_minutes * 60 * 30 / trial_frames)`` training trials; ``oracle_clips``
    natural clips × ``repeats`` (oracle), ``test_clips`` × ``repeats`` for each test tier, 2 ``none``
    trials. ``expected``: which trials get ``truth/expected`` (as large as the responses): ``all``,
    ``test`` (all but the train tier, what `twin evaluate` reads) or ``none``. ``workers``: recordings
    written at once, one process each (the files do not depend on it).
    """
    out = pathlib.Path(out)
    if expected not in EXPECTED:
        raise ValueError(f"expected must be one of {', '.join(EXPECTED)}, not {expected!r}")
    if recordings < 1 or neurons < 1 or workers < 1:
        raise ValueError("recordings, neurons and workers must be at least 1")
    train_trials = int(train_minutes * 60 * 30 / trial_frames)
    jobs = [Job(out=out, index=i, seed=seed, n_neurons=int(round(neurons * (1 + neuron_step * i))),
                train_trials=train_trials, trial_frames=trial_frames, repeats=repeats, oracle_clips=oracle_clips,
                test_clips=test_clips, variant=variant, expected=expected) for i in range(recordings)]
    existing = [p for p in (out / job.name for job in jobs) if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]}: already exists; choose another --out or remove it")
    workers = min(workers, recordings)
    check_space(out, jobs, workers)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=3 * sum(job.n_trials for job in jobs), desc=f"virtual mouse ({recordings} recordings)",
              unit="trial-step", disable=not progress) as bar:  # drive, spikes, noise
        if workers == 1:
            return [write_recording(job, bar) for job in jobs]
        return _in_workers(jobs, workers, bar)


class _QueueBar:
    """A worker's stand-in for the progress bar: sends its updates to the parent."""

    def __init__(self, queue):
        self.queue = queue

    def update(self, n=1):
        self.queue.put(n)


_queue = None


def _connect(queue):
    global _queue
    _queue = queue


def _work(job):
    return write_recording(job, _QueueBar(_queue))


def _in_workers(jobs, workers, bar):
    """Write ``jobs`` in ``workers`` fresh processes, one recording at a time each. Each keeps the BLAS
    threads of a single process: a matrix product's bits depend on their number."""
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    with context.Pool(workers, _connect, (queue,), maxtasksperchild=1) as pool:
        result = pool.map_async(_work, jobs, chunksize=1)
        while not result.ready() or not queue.empty():
            while not queue.empty():
                bar.update(queue.get())
            result.wait(0.2)
        return result.get()
