"""The run record: manifest.json, assembled from what is on disk and written atomically at the end of every run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from storage.fs import resolve
from storage.run import MANIFEST, REMOVED, SHARDS, RunDir, atomic_write

VERSION = 1


class ConservationError(RuntimeError):
    """Rows read != rows kept + rows removed: something lost or invented rows."""


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


@dataclass
class RunContents:
    """What a run directory holds, read from its files: the part of the manifest storage can vouch for.

    Args:
        shards: file records (path, partition, rows, bytes, sha256) of ``shards/``.
        removed_files: the same for ``removed/``.
        removed_by: ``{stage: {reason: rows}}`` over ``removed/``.
        domains: per domain of the kept shards: ``docs``, ``chars``, ``tokens`` (``n_tokens``, or None)
            and ``metadata``: the input-metadata columns (storage.schema.metadata_columns) its documents
            hold, each ``{name, type (Arrow), non_null}``, for columns with at least one value there.
    """

    shards: list[dict] = field(default_factory=list)
    removed_files: list[dict] = field(default_factory=list)
    removed_by: dict[str, dict[str, int]] = field(default_factory=dict)
    domains: list[dict] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return sum(s["rows"] for s in self.shards)

    @property
    def removed(self) -> int:
        return sum(s["rows"] for s in self.removed_files)

    @classmethod
    def read(cls, out_dir: str) -> RunContents:
        from storage.views import connect, has_column

        rd = RunDir(out_dir)
        con = connect(out_dir, manifest=None)
        removed_by: dict[str, dict[str, int]] = {}
        for stage, reason, n in con.execute(
            "SELECT stage, reason, count(*) FROM removed GROUP BY ALL ORDER BY stage, reason"
        ).fetchall():
            removed_by.setdefault(stage, {})[reason] = n
        tokens = "sum(n_tokens)" if has_column(con, "docs", "n_tokens") else "NULL"
        meta = metadata_types(rd)
        counts = "".join(f', count("{c.replace(chr(34), chr(34) * 2)}")' for c in meta)
        domains = [
            {"domain": d, "docs": n, "chars": c, "tokens": t, "metadata": _present(meta, rest)}
            for d, n, c, t, *rest in con.execute(
                f"SELECT domain, count(*), sum(length(text)), {tokens}{counts} FROM docs "
                "GROUP BY domain ORDER BY domain"
            ).fetchall()
        ]
        con.close()
        return cls(rd.file_records(SHARDS), rd.file_records(REMOVED), removed_by, domains)


def metadata_types(rd: RunDir) -> dict[str, str]:
    """``{column: Arrow type}`` of the input-metadata columns of a run's kept shards (from their footers)."""
    import pyarrow.parquet as pq

    from storage.schema import metadata_columns

    out: dict[str, str] = {}
    for path in rd.parquet(SHARDS):
        with rd.fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
        for name in metadata_columns(schema.names):
            out.setdefault(name, str(schema.field(name).type))
    return out


def _present(types: dict[str, str], counts: list[int]) -> list[dict[str, Any]]:
    return [{"name": c, "type": t, "non_null": n} for (c, t), n in zip(types.items(), counts) if n]


def assemble(
    contents: RunContents,
    *,
    head: dict[str, Any],
    started: datetime,
    seconds: float,
    stages: list[dict],
    read: int,
    synthetic: int = 0,
    extra: dict[str, Any] | None = None,
    input_errors: list[dict] | None = None,
) -> dict[str, Any]:
    """A manifest: ``version``, ``head`` (kind, source, recipe…), packages, times, ``extra`` (cluster,
    segments…), the stage funnel, then what the files hold and the conservation record."""
    manifest = {
        "version": VERSION,
        **head,
        "packages": package_versions(),
        "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "seconds": round(seconds, 3),
        **(extra or {}),
        "stages": stages,
        "domains": contents.domains,
        "shards": contents.shards,
        "removed_files": contents.removed_files,
    }
    if input_errors is not None:
        manifest["input_errors"] = input_errors
    manifest["conservation"] = conservation(read, contents.kept, contents.removed, synthetic)
    return manifest


def write_manifest(out_dir: str, manifest: dict[str, Any]) -> str:
    """Write ``manifest.json`` under ``out_dir`` through a temporary name; return its path."""
    fs, root = resolve(out_dir)
    path = f"{root}/{MANIFEST}"
    atomic_write(fs, path, json.dumps(manifest, indent=2, sort_keys=False, default=str).encode())
    return path


def read_manifest(out_dir: str) -> dict[str, Any]:
    fs, root = resolve(out_dir)
    path = f"{root}/{MANIFEST}"
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST}; is this a finished Sluice run directory?") from None
