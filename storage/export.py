"""Export a tokenized run in a format trainers read: Megatron-LM indexed datasets or MosaicML MDS.

Per domain and split (just per domain when the run has no ``split`` column), one document per
sample in shard order, token ids as written by the ``tokenize`` stage (EOS included).

**megatron** (``<domain>_<split>.bin`` / ``.idx``), read by Megatron's ``IndexedDataset(prefix)``:

- ``<prefix>.bin``: the token ids of every document, concatenated, as ``uint16`` when every id
  fits, else ``int32``;
- ``<prefix>.idx``: ``b"MMIDIDX\\x00\\x00"``, version ``<Q`` 1, dtype code ``<B`` (4 = int32,
  8 = uint16), sequence count ``<Q``, document count ``<Q``, then the sequence lengths
  (int32), the byte offset of every sequence (int64) and the document boundaries (int64:
  0, 1, …, n — one sequence per document).

**mds** (``<domain>/<split>/index.json`` + ``shard.NNNNN.mds``), read by MosaicML Streaming's
``StreamingDataset(local=DIR/<domain>, split="train")`` (or ``Stream(local=…, split=…)`` to mix
domains). Columns, one sample per document:

- ``tokens`` ``ndarray:uint16`` when every token id of the run is below 65,536 (SmolLM2, GPT-2,
  Llama-2 and most ≤64k vocabularies), else ``ndarray:int32`` (the run's own type). One dtype for
  the whole export, so streams mix without a per-domain cast; it is in ``index.json``, so a
  reader never guesses. ``uint16`` halves the bytes; trainers cast to int64 for the embedding
  lookup anyway. ``ndarray`` rather than raw ``bytes`` (which a reader must ``np.frombuffer``
  with a dtype agreed out of band): the sample decodes to a NumPy array of the recorded dtype.
- ``id`` ``str``; ``n_tokens`` ``int`` (int64, the length of ``tokens``); ``text`` ``str`` with
  ``with_text``.

Shards are cut as ``MDSWriter`` cuts them: a new shard starts when the next sample would take
the shard past ``shard_mb`` (default 64 MiB — Streaming's own ``size_limit`` default; a
StreamingDataset downloads and caches whole shards, so this is its unit of random access and
of cache eviction). ``compression="zstd[:level]"`` writes ``shard.NNNNN.mds.zstd`` instead, as
Streaming names it; ``index.json`` lists the sha256 of every raw and compressed shard
(``StreamingDataset(validate_hash="sha256")`` checks them).

MDS is written here from the format's spec (the layout ``streaming.base.format.mds`` reads:
``<I`` sample count, ``<I`` offsets of the n + 1 sample boundaries, the shard's config JSON,
then the samples, each as ``<I`` sizes of its variable-size columns followed by the column
values in sorted column order), not with ``streaming.MDSWriter``. mosaicml-streaming 0.13
pins ``numpy<2.2``, ``transformers<5`` and ``xxhash<4`` and needs ``torchvision`` plus the
boto3 / google-cloud-storage / azure / oci / paramiko clients: ``pip install --dry-run`` into
this project's environment installs 68 packages, downgrades numpy and transformers and replaces
the CPU torch with a CUDA build and its libraries. A few dozen lines of struct packing cost less
than that dependency on the export path. Streaming stays a test-only dependency (the Makefile
installs it ``--no-deps``) that reads every exported byte back and checks this writer against
``MDSWriter``'s bytes; see tests/storage/test_export.py.
The one difference from ``MDSWriter``: a document with no tokens (``add_eos: false`` and an
empty text) is written as an empty array, which Streaming decodes but ``MDSWriter`` refuses.

``export.json`` records the source run (its manifest's recipe hash, finish time and shards with
sha256) and every file written with its documents, tokens, bytes and sha256 (the lineage). Files
and MDS directories are written under a temporary name and renamed; the output directory must
not overlap the run. An export directory holds one export: exporting into it again replaces
it, and files of the earlier export that the new one does not write are removed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.manifest import read_manifest
from storage.run import HOLDOUT, SHARDS, TRAIN, RunDir, UnsafePathError, atomic_path, overlap, write_text_atomic

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
EXPORT_RECORD = "export.json"
FORMATS = ("megatron", "mds")
MDS_SHARD_MB = 64.0
MDS_INDEX = "index.json"
#: MDS ``ndarray`` shape header: ndim << 2 | code of the shape's dtype (its size is 2**code bytes)
_SHAPE_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def _tables(run: RunDir, domain: str, split: str | None, columns: list[str]) -> Iterator[pa.Table]:
    """``columns`` of the domain's kept rows of ``split``, one row group at a time, in shard order."""
    for d, path in run.shard_files():
        if d != domain:
            continue
        pf = pq.ParquetFile(run.fs.open_input_file(path))
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=columns + (["split"] if split is not None else []))
            if split is not None:
                t = t.filter(pc.equal(t.column("split"), split))
            if t.num_rows:
                yield t


def _token_lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    tokens = column.combine_chunks()
    values = tokens.values.to_numpy(zero_copy_only=False)
    offsets = tokens.offsets.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(tokens))]


def _documents(run: RunDir, domain: str, split: str | None) -> list[np.ndarray]:
    return [d for t in _tables(run, domain, split, ["tokens"]) for d in _token_lists(t.column("tokens"))]


def _max_token(run: RunDir) -> int:
    """The largest token id in the run, from the Parquet statistics of ``tokens`` (read where absent)."""
    top = 0
    for _, path in run.shard_files():
        pf = pq.ParquetFile(run.fs.open_input_file(path))
        meta = pf.metadata
        leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == "tokens")
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(leaf).statistics
            if stats is not None and stats.has_min_max:
                top = max(top, int(stats.max))
            else:
                m = pc.max(pc.list_flatten(pf.read_row_group(rg, columns=["tokens"]).column("tokens"))).as_py()
                top = max(top, m or 0)
    return top


def write_megatron(prefix: Path, docs: list[np.ndarray]) -> dict[str, Any]:
    """Write ``prefix.bin`` and ``prefix.idx`` for ``docs``; return their record."""
    top = max((int(d.max()) for d in docs if d.size), default=0)
    dtype = np.dtype(np.uint16) if top < 2**16 else np.dtype(np.int32)
    lengths = np.array([d.size for d in docs], np.int32)
    pointers = np.zeros(len(docs), np.int64)
    if len(docs) > 1:
        pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64)) * dtype.itemsize
    record: dict[str, Any] = {"prefix": prefix.name, "dtype": dtype.name, "documents": len(docs)}
    record["tokens"] = int(lengths.sum())
    data_hash, data_bytes = hashlib.sha256(), 0
    with atomic_path(f"{prefix}.bin") as tmp, open(tmp, "wb") as f:
        for d in docs:
            chunk = d.astype(dtype, copy=False).tobytes()
            f.write(chunk)
            data_hash.update(chunk)
            data_bytes += len(chunk)
    index = b"".join(
        [
            INDEX_HEADER,
            struct.pack("<Q", 1),
            struct.pack("<B", DTYPE_CODES[dtype]),
            struct.pack("<Q", len(docs)),
            struct.pack("<Q", len(docs) + 1),
            lengths.tobytes(),
            pointers.tobytes(),
            np.arange(len(docs) + 1, dtype=np.int64).tobytes(),
        ]
    )
    with atomic_path(f"{prefix}.idx") as tmp:
        Path(tmp).write_bytes(index)
    record["bin"] = {"bytes": data_bytes, "sha256": data_hash.hexdigest()}
    record["idx"] = {"bytes": len(index), "sha256": hashlib.sha256(index).hexdigest()}
    return record


def mds_encode(encoding: str, value: Any) -> bytes:
    """One column value as MDS stores it: ``str`` UTF-8, ``int`` int64, ``ndarray:<dtype>`` a 1-d array."""
    if encoding == "str":
        return value.encode("utf-8")
    if encoding == "int":
        return np.int64(value).tobytes()
    if encoding.startswith("ndarray:"):
        arr = np.ascontiguousarray(value, dtype=encoding.split(":", 1)[1])
        code = next(c for c, t in enumerate(_SHAPE_DTYPES) if arr.size <= np.iinfo(t).max)
        return bytes([1 << 2 | code]) + np.array([arr.size], _SHAPE_DTYPES[code]).tobytes() + arr.tobytes()
    raise ValueError(f"mds: encoding {encoding!r} is not written by Sluice")


class MDSDatasetWriter:
    """Writes one MDS dataset directory: ``shard.NNNNN.mds[.zstd]`` then ``index.json``, as ``MDSWriter`` lays them out.

    Args:
        directory: an existing, empty local directory.
        columns: column name → MDS encoding (``str``, ``int``, ``ndarray:<dtype>``).
        size_limit: shard size in bytes after which a new shard starts (< 2**32: offsets are uint32).
        compression: ``None`` or ``"zstd"`` / ``"zstd:<level>"`` (level 1–22, default 3).
    """

    def __init__(self, directory: Path, *, columns: dict[str, str], size_limit: int, compression: str | None) -> None:
        if not 0 < size_limit < 2**32:
            raise ValueError(f"mds: shard size {size_limit} bytes is outside 1 … 2**32 - 1 (uint32 offsets)")
        self.level = _zstd_level(compression)
        self.dir, self.size_limit, self.compression = directory, size_limit, compression
        self.names = sorted(columns)
        self.encodings = [columns[n] for n in self.names]
        self.sizes = [8 if e == "int" else None for e in self.encodings]
        self.config = {
            "version": 2,
            "format": "mds",
            "compression": compression,
            "hashes": ["sha256"],
            "size_limit": size_limit,
            "column_names": self.names,
            "column_encodings": self.encodings,
            "column_sizes": self.sizes,
        }
        self.config_data = json.dumps(self.config, sort_keys=True).encode("utf-8")
        self.shards: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.samples: list[bytes] = []
        self.shard_size = 8 + len(self.config_data)

    def write(self, sample: dict[str, Any]) -> None:
        """Encode ``sample`` (every column) and add it, closing the current shard first when it is full."""
        parts = [mds_encode(e, sample[n]) for n, e in zip(self.names, self.encodings)]
        head = np.array([len(p) for p, s in zip(parts, self.sizes) if s is None], np.uint32).tobytes()
        data = head + b"".join(parts)
        if self.samples and self.size_limit < self.shard_size + len(data) + 4:
            self._flush()
        self.samples.append(data)
        self.shard_size += len(data) + 4

    def _flush(self) -> None:
        n = len(self.samples)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum([len(s) for s in self.samples], out=offsets[1:])
        offsets += 4 + 4 * (n + 1) + len(self.config_data)
        if offsets[-1] >= 2**32:
            raise ValueError(f"mds: a shard of {offsets[-1]} bytes overflows MDS's uint32 offsets")
        raw = b"".join([np.uint32(n).tobytes(), offsets.astype(np.uint32).tobytes(), self.config_data, *self.samples])
        raw_name = f"shard.{len(self.shards):05d}.mds"
        raw_info = {"basename": raw_name, "bytes": len(raw), "hashes": {"sha256": hashlib.sha256(raw).hexdigest()}}
        zip_info, data, name = None, raw, raw_name
        if self.level is not None:
            import zstandard

            data, name = zstandard.ZstdCompressor(level=self.level).compress(raw), f"{raw_name}.zstd"
            zip_info = {"basename": name, "bytes": len(data), "hashes": {"sha256": hashlib.sha256(data).hexdigest()}}
        (self.dir / name).write_bytes(data)
        self.shards.append({"samples": n, "raw_data": raw_info, "zip_data": zip_info, **self.config})
        self.files.append({"name": name, "samples": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        self.samples, self.shard_size = [], 8 + len(self.config_data)

    def finish(self) -> dict[str, Any]:
        """Close the last shard, write ``index.json``; return the index file's record."""
        if self.samples:
            self._flush()
        index = json.dumps({"version": 2, "shards": self.shards}, sort_keys=True).encode("utf-8")
        (self.dir / MDS_INDEX).write_bytes(index)
        return {"bytes": len(index), "sha256": hashlib.sha256(index).hexdigest()}


def _zstd_level(compression: str | None) -> int | None:
    if compression is None:
        return None
    name, _, level = compression.partition(":")
    if name == "zstd" and (not level or (level.isdigit() and 1 <= int(level) <= 22)):
        return int(level or 3)
    raise ValueError(f"export: compression {compression!r} is not supported; use zstd or zstd:<1-22>")


def write_mds(
    run: RunDir, dest: Path, domain: str, split: str | None, *, dtype: np.dtype, size_limit: int,
    compression: str | None, with_text: bool,
) -> dict[str, Any] | None:  # fmt: skip
    """Write the MDS dataset ``dest/<domain>[/<split>]`` of one domain and split; return its record (None: no rows)."""
    rel = domain if split is None else f"{domain}/{split}"
    columns = {"id": "str", "n_tokens": "int", "tokens": f"ndarray:{dtype.name}"}
    if with_text:
        columns["text"] = "str"
    final = dest / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tables = _tables(run, domain, split, ["id", "tokens"] + (["text"] if with_text else []))
    first = next(tables, None)
    if first is None:
        return None
    documents = tokens = 0
    with atomic_path(final) as tmp:
        os.mkdir(tmp)
        w = MDSDatasetWriter(Path(tmp), columns=columns, size_limit=size_limit, compression=compression)
        for t in itertools.chain([first], tables):
            ids, docs = t.column("id").to_pylist(), _token_lists(t.column("tokens"))
            texts = t.column("text").to_pylist() if with_text else [None] * len(ids)
            for doc_id, doc, text in zip(ids, docs, texts):
                w.write({"id": doc_id, "n_tokens": doc.size, "tokens": doc, "text": text or ""})
                documents, tokens = documents + 1, tokens + doc.size
        index = w.finish()
        stale = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.tmp") if final.exists() else None
        if stale:
            os.replace(final, stale)  # the earlier export's directory; the new one takes its name next
    if stale:
        shutil.rmtree(stale)
    return {
        "dir": rel,
        "dtype": dtype.name,
        "columns": columns,
        "documents": documents,
        "tokens": tokens,
        "index": {"path": f"{rel}/{MDS_INDEX}", **index},
        "shards": [{"path": f"{rel}/{f.pop('name')}", **f} for f in w.files],
    }


def export(
    run_dir: str, dest: str, fmt: str = "megatron", *, shard_mb: float | None = None, with_text: bool = False,
    compression: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Export the tokenized run ``run_dir`` to ``dest`` (a new or earlier export directory).

    Args:
        run_dir: a curated run whose recipe has a ``tokenize`` stage.
        dest: a local directory outside the run, new, empty or holding an earlier export.
        fmt: ``megatron`` or ``mds``.
        shard_mb: MDS only: shard size limit in MiB (default 64).
        with_text: MDS only: add a ``text`` column.
        compression: MDS only: ``zstd`` or ``zstd:<level>``; None writes raw shards.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export: format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    if fmt != "mds" and (shard_mb is not None or with_text or compression is not None):
        raise ValueError("export: shard size, --with-text and --compression apply to --format mds only")
    size_limit = int((MDS_SHARD_MB if shard_mb is None else shard_mb) * 2**20)
    if fmt == "mds":
        _zstd_level(compression)
        if not 0 < size_limit < 2**32:
            raise ValueError(f"export: shard size {shard_mb} MiB is outside (0, 4096) (MDS offsets are uint32)")
    if "://" in dest:
        raise ValueError("export: the destination must be a local directory")
    manifest = read_manifest(run_dir)
    if overlap(dest, run_dir):
        raise UnsafePathError(f"export: {dest!r} overlaps the run {run_dir!r}; choose a directory outside it")
    out = Path(dest)
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_RECORD).exists():
        raise UnsafePathError(f"export: {dest!r} holds files Sluice did not export; choose a new or empty directory")
    run = RunDir(run_dir)
    files = run.shard_files()
    if not files:
        raise ValueError(f"export: {run_dir!r} has no shards under {SHARDS}/")
    schema = pq.read_schema(run.fs.open_input_file(files[0][1]))
    if "tokens" not in schema.names:
        raise ValueError(f"export: {run_dir!r} has no `tokens` column; end its recipe with {{op: tokenize}}")
    splits: list[str | None] = [TRAIN, HOLDOUT] if "split" in schema.names else [None]
    previous = _previous(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    dtype = np.dtype(np.uint16) if fmt == "mds" and _max_token(run) < 2**16 else np.dtype(np.int32)
    for domain in sorted({d for d, _ in files}):
        for split in splits:
            if fmt == "megatron":
                docs = _documents(run, domain, split)
                rec = write_megatron(out / _name(domain, split), docs) if docs else None
            else:
                rec = write_mds(
                    run, out, domain, split, dtype=dtype, size_limit=size_limit, compression=compression,
                    with_text=with_text,
                )  # fmt: skip
            if rec is not None:
                written.append({"domain": domain, "split": split, **rec})
    record: dict[str, Any] = {
        "format": fmt,
        "source": {
            "dir": str(Path(run_dir).resolve()),
            "recipe_hash": manifest.get("recipe_hash"),
            "finished": manifest.get("finished"),
            "shards": [{"path": s["path"], "sha256": s["sha256"]} for s in manifest.get("shards", [])],
        },
    }
    if fmt == "mds":
        record["mds"] = {"size_limit": size_limit, "compression": compression, "with_text": with_text}
    record["files"] = written
    write_text_atomic(out / EXPORT_RECORD, json.dumps(record, indent=1))
    _remove_stale(out, previous, _outputs(record))
    return record


def _name(domain: str, split: str | None) -> str:
    return domain if split is None else f"{domain}_{split}"


def _outputs(record: dict[str, Any]) -> set[str]:
    """Top-level paths (relative to the export directory) an export record says it wrote."""
    paths = set()
    for f in record.get("files", []):
        if "prefix" in f:
            paths |= {f"{f['prefix']}.bin", f"{f['prefix']}.idx"}
        elif "dir" in f:
            paths.add(f["dir"])
    return paths


def _previous(out: Path) -> set[str]:
    try:
        return _outputs(json.loads((out / EXPORT_RECORD).read_text()))
    except (OSError, ValueError):
        return set()


def _remove_stale(out: Path, old: set[str], new: set[str]) -> None:
    """Delete what an earlier export in ``out`` wrote (``old``) and this one (``new``) did not; only inside ``out``."""
    root = out.resolve()
    for rel in sorted(old - new):
        if any(rel.startswith(f"{n}/") for n in new):
            continue  # inside a directory this export replaced: gone already
        p = (out / rel).resolve()
        if p == root or root not in p.parents or not (p.exists() or p.is_symlink()):
            continue
        nested = [n[len(rel) + 1 :].split("/")[0] for n in new if n.startswith(f"{rel}/")]
        if nested:  # an earlier split-less dataset dir that now holds this export's <split>/ dirs: its own files only
            for child in p.iterdir():
                if child.name in nested:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        parent = p.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
