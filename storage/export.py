"""Export a tokenized run in a format trainers read: Megatron-LM's indexed dataset (``.bin`` + ``.idx``).

Per domain and split (``<domain>_train``, ``<domain>_holdout``; just ``<domain>`` when the run
has no ``split`` column), one document per sequence in shard order, token ids as written by
the ``tokenize`` stage (EOS included). Megatron's ``IndexedDataset(prefix)`` reads them:

- ``<prefix>.bin``: the token ids of every document, concatenated, as ``uint16`` when every id
  fits, else ``int32``;
- ``<prefix>.idx``: ``b"MMIDIDX\\x00\\x00"``, version ``<Q`` 1, dtype code ``<B`` (4 = int32,
  8 = uint16), sequence count ``<Q``, document count ``<Q``, then the sequence lengths
  (int32), the byte offset of every sequence (int64) and the document boundaries (int64:
  0, 1, …, n — one sequence per document).

``export.json`` records the source run (its manifest's recipe hash and finish time), every file
written with its documents, tokens, bytes and sha256 (the lineage). Files are written under a
temporary name and renamed; the output directory must not overlap the run.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.manifest import read_manifest
from storage.run import HOLDOUT, SHARDS, TRAIN, RunDir, UnsafePathError, atomic_path, overlap, write_text_atomic

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
EXPORT_RECORD = "export.json"


def _documents(run: RunDir, domain: str, split: str | None) -> list[np.ndarray]:
    docs: list[np.ndarray] = []
    for d, path in run.shard_files():
        if d != domain:
            continue
        pf = pq.ParquetFile(run.fs.open_input_file(path))
        cols = ["tokens"] + (["split"] if split is not None else [])
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=cols)
            if split is not None:
                t = t.filter(pc.equal(t.column("split"), split))
            tokens = t.column("tokens").combine_chunks()
            values = tokens.values.to_numpy(zero_copy_only=False)
            offsets = tokens.offsets.to_numpy()
            docs += [values[offsets[i] : offsets[i + 1]] for i in range(len(tokens))]
    return docs


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


def export(run_dir: str, dest: str, fmt: str = "megatron") -> dict[str, Any]:
    """Export the tokenized run ``run_dir`` to ``dest`` (a new or earlier export directory)."""
    if fmt != "megatron":
        raise ValueError(f"export: format {fmt!r} is not supported; use megatron")
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
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for domain in sorted({d for d, _ in files}):
        for split in splits:
            docs = _documents(run, domain, split)
            if docs:
                written.append({"domain": domain, "split": split, **write_megatron(out / _name(domain, split), docs)})
    record = {
        "format": "megatron",
        "source": {
            "dir": str(Path(run_dir).resolve()),
            "recipe_hash": manifest.get("recipe_hash"),
            "finished": manifest.get("finished"),
            "shards": [{"path": s["path"], "sha256": s["sha256"]} for s in manifest.get("shards", [])],
        },
        "files": written,
    }
    write_text_atomic(out / EXPORT_RECORD, json.dumps(record, indent=1))
    return record


def _name(domain: str, split: str | None) -> str:
    return domain if split is None else f"{domain}_{split}"
