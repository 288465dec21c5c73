"""Filesystem helpers: resolve local paths and pyarrow-filesystem URIs, expand globs."""

from __future__ import annotations

import fnmatch
import os

import pyarrow.fs as pafs

GLOB_CHARS = set("*?[")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A (filesystem, path) pair for a local path or a URI (``s3://``, ``gs://``, ``hf://``…)."""
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    path = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def expand_input(uri: str) -> list[str]:
    """Files an input names: itself, every file under a directory, or glob matches; sorted."""
    fs, path = resolve(uri)
    if not any(c in GLOB_CHARS for c in path):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [path]
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            return sorted(i.path for i in infos if i.type == pafs.FileType.File and not _hidden(i.path, path))
        return []
    base = path
    while any(c in GLOB_CHARS for c in base):
        base = base.rsplit("/", 1)[0] or "/"
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path))


def _hidden(path: str, base: str) -> bool:
    rel = path[len(base) :].lstrip("/")
    return any(part.startswith((".", "_")) for part in rel.split("/"))
