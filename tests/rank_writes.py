"""Run `twin` as one rank of a torchrun job and log every file this rank writes under the run folder.

    python rank_writes.py LOG_DIR RUN_DIR twin-arguments...

Python's audit hooks see every open for writing, rename and mkdir (from Python code, numpy and
matplotlib alike); each one under RUN_DIR is appended to LOG_DIR/rank<RANK>.txt.
"""

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def main() -> int:
    log_dir, run_dir, *arguments = sys.argv[1:]
    run_dir = os.path.realpath(run_dir)
    log = open(os.path.join(log_dir, f"rank{os.environ['RANK']}.txt"), "a", buffering=1)

    def under_run(path) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(run_dir)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            if writing and under_run(path):
                log.write(f"open {path}\n")
        elif event in ("os.rename", "os.mkdir", "os.remove") and under_run(args[-3 if event == "os.rename" else 0]):
            log.write(f"{event} {args[0]}\n")

    sys.addaudithook(hook)
    from twinserve.cli import main as twin

    return twin(arguments)


if __name__ == "__main__":
    sys.exit(main())
