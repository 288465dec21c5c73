"""What a run directory holds, and who may touch it: layout names, the ownership marker,
the per-run lock, and the one helper through which Sluice deletes anything.

A run directory ``OUT/`` holds only what Sluice wrote::

    OUT/.sluice-run                          ownership marker, written before anything else
    OUT/.sluice-lock                         held by the process writing the run (host, pid)
    OUT/manifest.json                        the run's record
    OUT/report.html                          `sluice report`
    OUT/shards/domain=<d>/part-NNNNN.parquet kept documents
    OUT/removed/stage=<s>/part-NNNNN.parquet removed rows
    OUT/_stages/NN-<name>/{live,removed}/part-NNNNN.parquet, _SUCCESS    checkpoints
    OUT/_tmp/…, OUT/_stages/NN-<name>/_tmp/…                             files being written

Every path Sluice may delete matches one of those patterns (plus the temporary names of
atomic writes). :meth:`RunDir.claim` refuses a directory holding anything else, or one that
overlaps an input; :meth:`RunDir.delete` refuses any path outside the run directory or not of
Sluice's layout, so a bad stage name, a user's file or an input can never be deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow.fs as pafs

from storage.fs import GLOB_CHARS, resolve

logger = logging.getLogger(__name__)

MARKER = ".sluice-run"
LOCK = ".sluice-lock"
MANIFEST = "manifest.json"
REPORT = "report.html"
SHARDS = "shards"
REMOVED = "removed"
STAGES = "_stages"
TMP = "_tmp"
SUCCESS = "_SUCCESS"
PROBE = ".sluice-write-test"
#: kept rows are partitioned by domain, removed rows by the stage that removed them (hive style)
DOMAIN_KEY = "domain"
STAGE_KEY = "stage"
#: values of the ``split`` column written by the split stage
TRAIN = "train"
HOLDOUT = "holdout"


def shard_dir(domain: str) -> str:
    """``shards/domain=<d>``: where a domain's kept rows go."""
    return f"{SHARDS}/{DOMAIN_KEY}={domain}"


def removed_dir(stage: str) -> str:
    """``removed/stage=<s>``: where a stage's removed rows go."""
    return f"{REMOVED}/{STAGE_KEY}={stage}"


def partition_value(rel: str) -> str:
    """The value of a file's partition: ``web`` for ``shards/domain=web/part-00000.parquet``."""
    return rel.split("/")[1].split("=", 1)[1]


#: names that become directory names (domains, stages): one strict pattern, matched whole
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_PART = r"part-\d{5,}\.parquet"
_TMP_SUFFIX = r"(\.[0-9a-f]{8}|\.\d+)?\.tmp"
#: relative paths (``/``-separated) that Sluice writes in a run directory
OWN_PATHS = re.compile(
    "|".join(
        (
            rf"(\.sluice-run|\.sluice-lock|\.sluice-write-test|manifest\.json|report\.html)({_TMP_SUFFIX})?",
            rf"shards/domain={_NAME}/{_PART}",
            rf"removed/stage={_NAME}/{_PART}({_TMP_SUFFIX})?",
            rf"{STAGES}/\d{{2,}}-{_NAME}/({SUCCESS}({_TMP_SUFFIX})?|(live|removed)/{_PART})",
            rf"{STAGES}/_file_hashes\.json({_TMP_SUFFIX})?",
            rf"({STAGES}/\d{{2,}}-{_NAME}/)?{TMP}/[A-Za-z0-9._-]+",
        )
    )
)


class UnsafePathError(ValueError):
    """Sluice refused to write to or delete a path it does not own."""


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a safe directory name (letters, digits, ``._-``; no ``..``), else ValueError."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{kind} {value!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '..' (it names a directory)"
        )
    return value


def is_own(rel: str) -> bool:
    """Whether ``rel`` (relative to a run directory) is a path Sluice writes there."""
    return OWN_PATHS.fullmatch(rel) is not None


def _local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def real(uri: str) -> str:
    """The canonical form of a path or URI: symlinks resolved for local paths."""
    if _local(uri):
        return os.path.realpath(uri.removeprefix("file://"))
    fs, path = resolve(uri)
    return f"{fs.type_name}://{path.rstrip('/')}"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def input_base(pattern: str) -> str:
    """The directory or file an input names, without its glob part."""
    if _local(pattern):
        path = pattern.removeprefix("file://")
        parts = path.split("/")
        for i, part in enumerate(parts):
            if any(c in GLOB_CHARS for c in part):
                return "/".join(parts[:i]) or "/"
        return path
    return pattern


def overlap(a: str, b: str) -> bool:
    """Whether two paths are the same or one contains the other (after resolving symlinks)."""
    ra, rb = real(a), real(b)
    return _inside(ra, rb) or _inside(rb, ra)


@dataclass
class RunDir:
    """A run directory and the rules for touching it.

    Args:
        uri: the directory, a local path or a pyarrow filesystem URI.
    """

    uri: str

    def __post_init__(self) -> None:
        self.uri = self.uri.rstrip("/") or "/"
        self.fs, self.root = resolve(self.uri)
        if _local(self.uri):
            self.root = os.path.realpath(self.root)

    # ------------------------------------------------------------ listing
    def files(self, sub: str = "") -> Iterator[str]:
        """Every file under ``sub`` as a path relative to the run directory (symlinks not followed)."""
        base = f"{self.root}/{sub}".rstrip("/")
        if _local(self.uri):
            if os.path.isfile(base) or os.path.islink(base):
                yield base[len(self.root) + 1 :]
                return
            for d, dirs, names in os.walk(base, followlinks=False):
                dirs.sort()
                for n in sorted(names) + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
                    yield os.path.join(d, n)[len(self.root) + 1 :]
            return
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        for i in sorted(infos, key=lambda i: i.path):
            if i.type == pafs.FileType.File:
                yield i.path[len(self.root) + 1 :]

    def foreign(self, limit: int = 5) -> list[str]:
        """Up to ``limit`` files in the directory that Sluice did not write."""
        out = []
        for rel in self.files():
            if not is_own(rel):
                out.append(rel)
                if len(out) >= limit:
                    break
        return out

    def parquet(self, sub: str) -> list[str]:
        """Absolute paths of the Parquet files under ``sub`` (``shards``, a checkpoint's ``live``…), sorted."""
        return sorted(f"{self.root}/{rel}" for rel in self.files(sub) if rel.endswith(".parquet"))

    def shard_files(self) -> list[tuple[str, str]]:
        """(domain, absolute path) of every kept shard, sorted: what a reader of the run serves."""
        return sorted((partition_value(p[len(self.root) + 1 :]), p) for p in self.parquet(SHARDS))

    def file_record(self, rel: str) -> dict:
        """Path (relative), partition, rows, bytes and sha256 of one Parquet file, read from disk."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self.fs.open_input_stream(f"{self.root}/{rel}") as f:
            data = f.read()
        return {
            "path": rel,
            "partition": rel.split("/")[1],
            "rows": pq.read_metadata(pa.BufferReader(data)).num_rows,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def file_records(self, sub: str) -> list[dict]:
        """:meth:`file_record` of every Parquet file under ``sub``."""
        return [self.file_record(p[len(self.root) + 1 :]) for p in self.parquet(sub)]

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type != pafs.FileType.NotFound

    def owned(self) -> bool:
        return self.fs.get_file_info(f"{self.root}/{MARKER}").type == pafs.FileType.File

    # ------------------------------------------------------------ ownership
    def check_inputs(self, inputs: Iterable[str], what: str = "an input") -> None:
        """Refuse a directory that is, contains or lies inside any of ``inputs``."""
        for inp in inputs:
            base = input_base(inp)
            if overlap(self.uri, base):
                raise UnsafePathError(
                    f"output directory {self.uri!r} overlaps {what} ({inp!r}): Sluice would read its own output "
                    "or delete the input. Choose an output directory outside every input."
                )

    def claim(self, inputs: Sequence[str] = (), *, kind: str = "curate") -> None:
        """Make the directory Sluice's: create it and write the marker, after checking that it
        holds nothing Sluice did not write and overlaps no input. Idempotent."""
        self.check_inputs(inputs)
        if self.exists() and self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            raise UnsafePathError(f"output {self.uri!r} exists and is not a directory")
        other = self.foreign()
        if other:
            listing = ", ".join(other) + (" …" if len(other) >= 5 else "")
            raise UnsafePathError(
                f"output directory {self.uri!r} holds files Sluice did not write ({listing}); Sluice will not "
                "write into it or delete them. Choose a new or empty directory, or move those files away."
            )
        self.fs.create_dir(self.root, recursive=True)
        if not self.owned():
            body = {"sluice_run": 1, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write(self.fs, f"{self.root}/{MARKER}", json.dumps(body).encode())

    # ------------------------------------------------------------ deleting
    def _rel(self, path: str) -> str:
        """``path`` (relative to the run, or absolute) as a normalised relative path; outside the run: error."""
        if _local(self.uri):
            full = os.path.normpath(path if os.path.isabs(path) else os.path.join(self.root, path))
            full = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))  # symlinked parents
        else:
            full = path if _inside(path, self.root) else f"{self.root}/{path}"
            if any(p in ("..", ".") for p in full.split("/")):
                full = "/.."  # never inside
        if full == self.root or not _inside(full, self.root):
            raise UnsafePathError(f"refusing to delete {path!r}: it is not inside the run directory {self.root!r}")
        return full[len(self.root) + 1 :]

    def delete(self, path: str) -> int:
        """Delete a file, or every file under a directory, of Sluice's layout inside the run directory.

        Every file is checked before any is deleted: a path outside the run, or a file Sluice
        does not write, raises :class:`UnsafePathError` and nothing is deleted. Emptied
        directories are removed. Returns the number of files deleted.
        """
        rel = self._rel(path)
        files = list(self.files(rel))
        bad = [f for f in files if not is_own(f)]
        if bad:
            raise UnsafePathError(
                f"refusing to delete {path!r}: {self.root}/{bad[0]} was not written by Sluice"
                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            )
        for f in files:
            self.fs.delete_file(f"{self.root}/{f}")
        self._prune(rel)
        return len(files)

    def _prune(self, rel: str) -> None:
        """Remove ``rel`` and its sub-directories if they hold no files."""
        full = f"{self.root}/{rel}"
        if _local(self.uri):
            if not os.path.isdir(full) or os.path.islink(full):
                return
            for d, _, _ in sorted(os.walk(full), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        else:
            with contextlib.suppress(OSError):
                if self.fs.get_file_info(full).type == pafs.FileType.Directory and not list(self.files(rel)):
                    self.fs.delete_dir(full)

    def clear(self) -> int:
        """Delete everything Sluice wrote here except the marker and the lock (``--fresh``)."""
        n = 0
        for sub in (SHARDS, REMOVED, STAGES, TMP, MANIFEST, REPORT):
            if self.fs.get_file_info(f"{self.root}/{sub}").type != pafs.FileType.NotFound:
                n += self.delete(sub)
        return n

    # ------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, command: str = "sluice") -> Iterator[None]:
        """Hold ``OUT/.sluice-lock`` while writing; a second writer is told who holds it.

        The lock file records host, pid and start time. A lock left by a process that no
        longer exists on this host is stale and taken over (with a warning); a lock held from
        another host is never broken automatically.
        """
        path = f"{self.root}/{LOCK}"
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "command": command}
        self.fs.create_dir(self.root, recursive=True)
        self._acquire(path, me)
        try:
            yield
        finally:
            held = self._holder(path)
            if held and held.get("pid") == me["pid"] and held.get("host") == me["host"]:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(path)

    def _holder(self, path: str) -> dict | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read() or b"{}")
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _acquire(self, path: str, me: dict) -> None:
        body = json.dumps(me).encode()
        for _ in range(3):
            if _local(self.uri):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "wb") as f:
                        f.write(body)
                    return
            elif self.fs.get_file_info(path).type == pafs.FileType.NotFound:  # object stores: best effort
                atomic_write(self.fs, path, body)
                return
            held = self._holder(path) or {}
            if held.get("host") == me["host"] and not _alive(held.get("pid")):
                logger.warning("%s: taking over a stale lock of pid %s (no longer running)", self.uri, held.get("pid"))
                with contextlib.suppress(OSError):
                    self.fs.delete_file(path)
                continue
            since = held.get("since")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, float) else "?"
            raise RunLockedError(
                f"{self.uri} is in use by {held.get('command', 'another Sluice process')} (pid {held.get('pid')} on "
                f"{held.get('host')}, since {when}). Wait for it to finish; if that process is gone, delete "
                f"{self.root}/{LOCK}."
            )
        raise RunLockedError(f"could not take the lock {path}")


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_name(path: str) -> str:
    """The temporary name an atomic write uses before renaming to ``path`` (one scheme everywhere)."""
    return f"{path}.{uuid.uuid4().hex[:8]}.tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary local path to write ``path``'s content to (a file or a folder, by any writer:
    ``torch.save``, ``save_pretrained``…); renamed to ``path`` when the block ends without error,
    removed otherwise."""
    import shutil

    final = os.fspath(path)
    tmp = _tmp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a local text file through :func:`atomic_path` (its folder created first)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary name, then rename: readers see all or nothing."""
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = _tmp_name(path)
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
