"""The run record: manifest.json, written atomically at the end of every run."""

from __future__ import annotations

import json
import os
from importlib import metadata
from typing import Any

from storage.fs import resolve

MANIFEST = "manifest.json"
VERSION = 1

#: distributions whose versions every manifest records
TRACKED = (
    "sluice",
    "ray",
    "pyarrow",
    "polars",
    "duckdb",
    "datasketch",
    "torch",
    "transformers",
    "sentence-transformers",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def conservation(read: int, kept: int, removed: int, synthetic: int = 0) -> dict[str, Any]:
    """The conservation record: rows read (+ synthetic rows added) must equal rows kept + rows removed."""
    ok = read + synthetic == kept + removed
    return {
        "read": read,
        "kept": kept,
        "removed": removed,
        "synthetic": synthetic,
        "ok": ok,
        "message": "read = kept + removed"
        if ok
        else f"rows read {read} (+{synthetic} synthetic) != kept {kept} + removed {removed}",
    }


def write_manifest(out_dir: str, manifest: dict[str, Any]) -> str:
    """Write ``manifest.json`` under ``out_dir`` through a temporary name; return its path."""
    fs, root = resolve(out_dir)
    path = f"{root}/{MANIFEST}"
    tmp = f"{path}.{os.getpid()}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=False, default=str).encode())
    fs.move(tmp, path)
    return path


def read_manifest(out_dir: str) -> dict[str, Any]:
    fs, root = resolve(out_dir)
    path = f"{root}/{MANIFEST}"
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST}; is this a finished Sluice run directory?") from None
