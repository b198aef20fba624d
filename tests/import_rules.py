"""Run import-linter (`lint-imports`) on twinserve as it installs.

The rooms are top-level folders that import as `twinserve.<room>` (setuptools `package-dir`), which
the linter cannot see in the source tree. So it reads a tree of links shaped like the installed
package: `<tree>/twinserve/{__init__.py, contract.py, …, training -> <root>/training, …}`.

    python tests/import_rules.py        # exit status of lint-imports (`make test` runs this)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "twinserve"


def package_dirs(root: Path) -> dict[str, Path]:
    """Sub-packages of the namespace → their folders, from pyproject.toml's package-dir table."""
    table = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name.removeprefix(NAMESPACE + "."): root / folder for name, folder in table.items() if name != NAMESPACE}


def link_tree(root: Path, tree: Path) -> Path:
    """Lay out the package as installed, with links into `root` → the folder to put on PYTHONPATH."""
    package = tree / NAMESPACE
    package.mkdir(parents=True)
    for module in (root / NAMESPACE).glob("*.py"):
        (package / module.name).symlink_to(module)
    for name, folder in package_dirs(root).items():
        (package / name).symlink_to(folder, target_is_directory=True)
    return tree


def lint(root: Path = ROOT) -> subprocess.CompletedProcess:
    """`lint-imports` with `root`'s pyproject.toml over `root`'s code → the finished process (output captured)."""
    linter = Path(sys.executable).parent / "lint-imports"
    with tempfile.TemporaryDirectory() as scratch:
        tree = link_tree(root, Path(scratch) / "tree")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        return subprocess.run([str(linter), "--no-cache", str(root / "pyproject.toml")], cwd=scratch, env=env,
                              capture_output=True, text=True, timeout=300)


if __name__ == "__main__":
    result = lint()
    print(result.stdout[-4000:] + result.stderr[-4000:])
    sys.exit(result.returncode)
