"""`manifest.json` of an artifacts folder: what each file is, and its sha256 so tampering is caught."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact is missing, unreadable or does not match its manifest; the message names the file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(artifacts: str | Path) -> dict:
    path = Path(artifacts) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; is {artifacts} an artifacts folder written by `twin export`?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None


def verified_path(artifacts: str | Path, recording: str, graph: str) -> Path:
    """Path of one graph file after checking it against the manifest's sha256."""
    manifest = read_manifest(artifacts)
    try:
        entry = manifest["recordings"][recording]["graphs"][graph]
    except KeyError:
        known = sorted(manifest.get("recordings", {}))
        raise ArtifactError(f"no {graph!r} graph for recording {recording!r} in the manifest; recordings: {known}") from None
    path = Path(artifacts) / entry["file"]
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    actual = sha256(path)
    if actual != entry["sha256"]:
        raise ArtifactError(f"{path}: sha256 {actual[:16]}… does not match the manifest's {entry['sha256'][:16]}…; "
                            f"the file was changed or corrupted after export")
    return path


def verify_all(artifacts: str | Path) -> dict:
    """Check every graph file of the manifest → the manifest."""
    manifest = read_manifest(artifacts)
    for recording, entry in manifest["recordings"].items():
        for graph in entry["graphs"]:
            verified_path(artifacts, recording, graph)
    return manifest
