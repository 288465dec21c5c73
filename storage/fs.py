"""Filesystem helpers: resolve local paths and pyarrow-filesystem URIs, expand globs."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow.fs as pafs

GLOB_CHARS = set("*?[")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A (filesystem, path) pair for a local path or a URI (``s3://``, ``gs://``, ``hf://``…)."""
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    path = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(path)


#: version-control folders: never read as documents, counted as ``input_excluded``
VCS_DIRS = frozenset({".git", ".hg", ".svn", ".bzr"})


@dataclass
class Listing:
    """The files an input names, and what it leaves out.

    Args:
        files: files to read, sorted.
        excluded: (path, why) of every file matched by an ``exclude`` pattern and of every
            version-control folder, sorted; each becomes one ``input_excluded`` row.
        cycles: directories reached again through a symbolic link (walked once).
    """

    files: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    cycles: list[str] = field(default_factory=list)


def detect_format(path: str, declared: str = "auto") -> str:
    """``jsonl``, ``parquet``, ``warc`` or ``text`` (a document per file) from a file name, unless ``declared``."""
    if declared != "auto":
        return declared
    name = path.lower()
    for ext in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(ext)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".warc"):
        return "warc"
    return "text"


def list_input(uri: str, exclude: Sequence[str] = ()) -> Listing:
    """Files ``uri`` names (a file, a directory walked recursively, or a glob), nothing skipped silently.

    Local directories are walked following symbolic links, each real directory once (a link
    back up the tree is recorded in ``cycles`` instead of looping).
    """
    fs, path = resolve(uri)
    globbed = any(c in GLOB_CHARS for c in path)
    base = path
    while any(c in GLOB_CHARS for c in base):
        base = base.rsplit("/", 1)[0] or "/"
    out = Listing()
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File and not globbed:
        out.files.append(path)
        return out
    if info.type != pafs.FileType.Directory:
        return out
    local = isinstance(fs, pafs.LocalFileSystem)
    for f in _walk_local(base, out) if local else _walk_remote(fs, base, out):
        if globbed and not fnmatch.fnmatchcase(f, path):
            continue
        rel = f[len(base) :].lstrip("/")
        hit = next((p for p in exclude if fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(f, p)), None)
        if hit is not None:
            out.excluded.append((f, f"matches exclude pattern {hit!r}"))
        else:
            out.files.append(f)
    out.files.sort()
    out.excluded.sort()
    return out


def _walk_local(base: str, out: Listing) -> Iterator[str]:
    seen: set[tuple[int, int]] = set()

    def fail(e: OSError) -> None:
        raise e

    for d, dirs, names in os.walk(base, followlinks=True, onerror=fail):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:
            out.cycles.append(d)
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for v in [x for x in dirs if x in VCS_DIRS]:
            out.excluded.append((os.path.join(d, v), "version-control folder"))
        dirs[:] = sorted(x for x in dirs if x not in VCS_DIRS)
        for n in names:
            yield os.path.join(d, n)


def _walk_remote(fs: pafs.FileSystem, base: str, out: Listing) -> Iterator[str]:
    for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        parts = i.path[len(base) :].strip("/").split("/")
        vcs = next((k for k, p in enumerate(parts) if p in VCS_DIRS), None)
        if vcs is not None:
            if i.type == pafs.FileType.Directory and vcs == len(parts) - 1:
                out.excluded.append((i.path, "version-control folder"))
            continue
        if i.type == pafs.FileType.File:
            yield i.path
