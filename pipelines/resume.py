"""What a checkpoint depends on, so that resume never reuses stale work.

A segment's fingerprint hashes: the recipe up to the segment's last stage, the Sluice version,
every matched input file (path, size, modification time; object stores report the same two
facts) and the content of every file a stage up to there reads (parameters named in
:data:`FILE_PARAMS` that name a local file or folder: models, tokenizers, target and eval sets,
block lists; a ``packaged:`` model counts by its package's version). The parts are stored in
the checkpoint's ``_SUCCESS`` so a mismatch can say what changed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from importlib import metadata
from typing import Any

from pipelines.recipe import Recipe, stage_params
from storage.fs import resolve
from storage.run import STAGES, atomic_write

logger = logging.getLogger(__name__)

#: stage parameters that name files a stage reads; their content is part of the fingerprint
FILE_PARAMS = frozenset(
    {"model", "tokenizer", "encoder", "targets", "eval_sets", "block_domains", "block_urls", "block_words"}
)
HASH_CACHE = f"{STAGES}/_file_hashes.json"


def sluice_version() -> str:
    try:
        return metadata.version("sluice")
    except metadata.PackageNotFoundError:
        return "unknown"


def input_state(tasks: list[Any]) -> dict[str, list]:
    """``{path: [size, mtime_ns]}`` of every file the inputs' read tasks (``InputDatasource.tasks``) name,
    excluded ones included: the listing the run reads, stat'ed once."""
    out: dict[str, list] = {}
    by_fs: dict[int, tuple[Any, list[str]]] = {}
    for t in tasks:
        fs, _ = resolve(t.uri)
        by_fs.setdefault(id(fs) if "://" in t.uri else 0, (fs, []))[1].append(t.path)
    for fs, paths in by_fs.values():
        for info in fs.get_file_info(paths):
            out[info.path] = [info.size, info.mtime_ns if info.mtime is not None else None]
    return out


class FileHashes:
    """sha256 of local files, cached by (path, size, mtime) in the run's ``_stages/_file_hashes.json``."""

    def __init__(self, out_dir: str) -> None:
        self.fs, root = resolve(out_dir)
        self.path = f"{root}/{HASH_CACHE}"
        try:
            with self.fs.open_input_stream(self.path) as f:
                self.cache: dict[str, str] = json.loads(f.read())
        except (OSError, ValueError):
            self.cache = {}
        self.dirty = False

    def of(self, path: str) -> str:
        st = os.stat(path)
        key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.cache:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self.cache[key] = h.hexdigest()
            self.dirty = True
        return self.cache[key]

    def spec(self, value: str) -> str | None:
        """A content digest for a file-naming parameter value, or None when it names no local file."""
        if value.startswith("packaged:"):
            from operators.models import PACKAGED

            pkg = PACKAGED.get(value.removeprefix("packaged:"))
            dist = pkg.dist.split("==")[0] if pkg else None
            try:
                return f"{dist}=={metadata.version(dist)}" if dist else value
            except metadata.PackageNotFoundError:
                return value
        value = local_path(value)
        if value is None:
            return None
        if os.path.isfile(value):
            return self.of(value)
        h = hashlib.sha256()
        for d, dirs, names in os.walk(value):
            dirs.sort()
            for n in sorted(names):
                p = os.path.join(d, n)
                h.update(f"{os.path.relpath(p, value)}\0{self.of(p)}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.dirty:
            atomic_write(self.fs, self.path, json.dumps(self.cache, indent=0).encode())
            self.dirty = False


def default_file_params(op: str) -> dict[str, Any]:
    """The file-naming parameters an operator uses when the recipe leaves them unset: its constructor's string
    defaults (``tokenizer: packaged:smollm2-135m``) and what it finds itself (:meth:`Operator.default_files`)."""
    from operators import load_all
    from operators.base import REGISTRY

    load_all()
    cls = REGISTRY[op]
    sig = inspect.signature(cls.__init__).parameters
    found = {k: p.default for k, p in sig.items() if k in FILE_PARAMS and isinstance(p.default, str)}
    return {**found, **cls.default_files()}


def named_files(op: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` of every value of a stage's file-naming parameters (:data:`FILE_PARAMS`), the ones
    it uses by default included: ``("model", "packaged:smollm2-135m")``, ``("eval_sets[1]", "qa.jsonl=web")``."""
    params = {**default_file_params(op), **{k: v for k, v in params.items() if v is not None}}
    out = []
    for key in sorted(FILE_PARAMS & params.keys()):
        value = params[key]
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(v, str):
                out.append((f"{key}[{i}]" if isinstance(value, list) else key, v))
    return out


def local_path(value: str) -> str | None:
    """The local file or folder a file-naming parameter value names (an eval set may be given as
    ``PATH=DOMAIN``); None for a URI, a ``packaged:`` model, a hub id or a missing path."""
    if value.startswith("packaged:") or "://" in value:
        return None
    if os.path.exists(value):
        return value
    path = value.partition("=")[0]
    return path if "=" in value and os.path.exists(path) else None


def stage_files(recipe: Recipe, hashes: FileHashes) -> list[dict[str, str]]:
    """Per stage, ``{param: digest}`` of the local files its parameters name, or would use by default."""
    out = []
    for st in recipe.stages:
        try:
            params = stage_params(st)
        except Exception:  # a recipe that validated always has params; be safe for the fingerprint
            params = dict(st.params)
        digests = ((label, hashes.spec(v)) for label, v in named_files(st.op, params))
        out.append({label: d for label, d in digests if d is not None})
    return out


def fingerprint(recipe: Recipe, upto: int, inputs: dict[str, list], files: list[dict[str, str]]) -> str:
    """The fingerprint of a segment ending before stage ``upto``."""
    body = {
        "recipe": recipe.fingerprint(upto),
        "sluice": sluice_version(),
        "inputs": sorted(inputs.items()),
        "files": files[:upto],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def what_changed(recipe: Recipe, upto: int, done: Any, inputs: dict, files: list) -> str:
    """A short human description of why a checkpoint (a ``SegmentRecord``) no longer matches."""
    if done.recipe_fingerprint not in (None, recipe.fingerprint(upto)):
        return "the recipe changed"
    if done.sluice not in (None, sluice_version()):
        return f"Sluice changed ({done.sluice} -> {sluice_version()})"
    old = {k: list(v) for k, v in (done.inputs or {}).items()}
    if old != inputs:
        added = sorted(set(inputs) - set(old))
        gone = sorted(set(old) - set(inputs))
        changed = sorted(k for k in set(old) & set(inputs) if old[k] != inputs[k])
        parts = []
        for label, names in (("changed", changed), ("new", added), ("gone", gone)):
            if names:
                parts.append(f"{label} input file(s): {', '.join(names[:3])}" + (" …" if len(names) > 3 else ""))
        return "; ".join(parts) or "the inputs changed"
    if (done.stage_files or [])[:upto] != files[:upto]:
        return "a file a stage reads (model, list or eval set) changed"
    return "its fingerprint differs"
