"""The Python backend's shared-memory regions, which a killed server leaves behind in /dev/shm.

Triton's Python backend talks to its stubs through POSIX shared-memory regions (about 1 MB each, one
per model instance) and removes them when it exits cleanly, not after SIGKILL. So every server gets
a region prefix naming the process that launched it (`region_prefix`, passed as the backend's
`shm-region-prefix-name`); `TritonServer.stop()` removes its own regions, and a starting server
removes those whose launcher is gone and that no live process maps (`sweep_orphans`): a server dies
with its launcher (`PR_SET_PDEATHSIG`), and one that outlived it still maps its regions.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SHM_ROOT = Path("/dev/shm")
PREFIX = "twinserve_"


def region_prefix() -> str:
    """A new server's prefix: twinserve_<launcher pid>_<random>_ (the backend appends a UUID)."""
    return f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"


def remove_regions(prefix: str, root: Path = SHM_ROOT) -> int:
    """Unlink the regions named `prefix`… → how many were removed."""
    removed = 0
    for path in root.glob(f"{prefix}*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _mapped(root: Path) -> set[str]:
    """Names of files under `root` that some process on this machine maps (/proc/<pid>/maps)."""
    names, folder = set(), f"{root}/"
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text().splitlines()
        except OSError:  # the process ended, or is not ours to read
            continue
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(folder):
                names.add(fields[5][len(folder):].removesuffix(" (deleted)"))
    return names


def sweep_orphans(root: Path = SHM_ROOT) -> list[str]:
    """Unlink the regions of launchers that are gone and that no process maps → their names."""
    candidates = []
    for path in root.glob(f"{PREFIX}*"):
        launcher = path.name[len(PREFIX):].split("_", 1)[0]
        if launcher.isdigit() and not _alive(int(launcher)):
            candidates.append(path)
    if not candidates:
        return []
    mapped, removed = _mapped(root), []
    for path in candidates:
        if path.name in mapped:
            continue
        try:
            path.unlink(missing_ok=True)
        except PermissionError:  # another user's region (/dev/shm is sticky): theirs to remove
            continue
        removed.append(path.name)
    return removed
