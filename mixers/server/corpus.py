"""Index a run's tokenized shards per domain and split, and read documents' tokens a row group at a time.

The mixer never loads a domain whole. At start it reads two small columns (``split``,
``n_tokens``) of every shard and keeps, per document, its row number inside its row
group and its token count (12 bytes a document); token lists are read later one row
group at a time, only for the rows a batch needs.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from storage.run import HOLDOUT, SHARDS, TRAIN, RunDir

logger = logging.getLogger(__name__)

SPLITS = (TRAIN, HOLDOUT)


@dataclass
class SplitIndex:
    """The documents of one (domain, split), grouped into *units* (one Parquet row group each).

    Attributes:
        unit_file: index into :attr:`Corpus.files` per unit.
        unit_rg: row-group number inside that file per unit.
        unit_start: CSR offsets (len units + 1) into the per-document arrays.
        doc_row: each document's row inside its row group.
        doc_len: each document's token count.
    """

    unit_file: np.ndarray
    unit_rg: np.ndarray
    unit_start: np.ndarray
    doc_row: np.ndarray
    doc_len: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.unit_file)

    @property
    def n_docs(self) -> int:
        return len(self.doc_row)

    @property
    def tokens(self) -> int:
        return int(self.doc_len.sum())

    def unit_tokens(self) -> np.ndarray:
        """Tokens per unit (int64)."""
        if not self.n_units:
            return np.zeros(0, np.int64)
        return np.add.reduceat(self.doc_len, self.unit_start[:-1]) if self.n_docs else np.zeros(self.n_units, np.int64)

    @classmethod
    def build(cls, parts: list[tuple[int, int, np.ndarray, np.ndarray]]) -> SplitIndex:
        parts = [p for p in parts if len(p[2])]
        sizes = np.array([len(p[2]) for p in parts], np.int64)
        return cls(
            unit_file=np.array([p[0] for p in parts], np.int32),
            unit_rg=np.array([p[1] for p in parts], np.int32),
            unit_start=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            doc_row=np.concatenate([p[2] for p in parts]).astype(np.int32) if parts else np.zeros(0, np.int32),
            doc_len=np.concatenate([p[3] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
        )


class Corpus:
    """The tokenized shards of a run directory: per domain, a train and a holdout :class:`SplitIndex`.

    Domains are the ``domain=<d>`` partitions under ``OUT/shards/``. Without a ``split``
    column every document counts as train (and there is no holdout).

    Token ids are held as ``token_type``: uint16 when the Parquet statistics of every row
    group put them in [0, 65535] (vocabularies up to 64K, e.g. SmolLM2's 49,152), which
    halves the memory of windows and batches and the bytes on the wire; int32 otherwise.

    Args:
        out: the run directory (local path or a pyarrow filesystem URI).
        threads: files indexed in parallel.
    """

    def __init__(self, out: str, threads: int = 8) -> None:
        self.out = out.rstrip("/")
        run = RunDir(self.out)
        self.fs, self.shards_root = run.fs, f"{run.root}/{SHARDS}"
        try:
            frags = run.shard_files()
        except OSError as e:
            raise FileNotFoundError(f"{out}: no readable {SHARDS}/ directory ({e})") from None
        if not frags:
            raise FileNotFoundError(f"{out}: no shards under {SHARDS}/domain=<d>/; is this a finished run?")
        try:
            ds = pads.dataset([p for _, p in frags], filesystem=self.fs, format="parquet")
        except (FileNotFoundError, pa.ArrowInvalid) as e:
            raise FileNotFoundError(f"{out}: unreadable shards under {SHARDS}/ ({e})") from None
        self.files = [p for _, p in frags]
        file_domain = [d for d, _ in frags]
        self.domains = sorted(set(file_domain))
        schema = ds.schema
        if "tokens" not in schema.names:
            raise ValueError(f"{out}: shards have no `tokens` column; add `{{op: tokenize}}` to the recipe")
        self.has_split = "split" in schema.names
        if not self.has_split:
            logger.warning("%s: shards have no `split` column; serving every document as train, no holdout", out)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            scanned = list(pool.map(self._scan, range(len(self.files))))
        self.metadata = [m for m, _ in scanned]
        self.token_type = np.dtype(np.uint16 if _fits_uint16(self.metadata) else np.int32)
        self.index: dict[str, dict[str, SplitIndex]] = {}
        for dom in self.domains:
            per_split: dict[str, list] = {s: [] for s in SPLITS}
            for f, (_, units) in enumerate(scanned):
                if file_domain[f] == dom:
                    for split, parts in units.items():
                        per_split[split].extend(parts)
            self.index[dom] = {s: SplitIndex.build(per_split[s]) for s in SPLITS}

    def _scan(self, f: int) -> tuple[pq.FileMetaData, dict[str, list]]:
        with self.fs.open_input_file(self.files[f]) as fh:
            pf = pq.ParquetFile(fh)
            md = pf.metadata
            names = set(pf.schema_arrow.names)
            cols = [c for c in ("split", "n_tokens") if c in names]
            if "n_tokens" not in names:
                cols.append("tokens")
            out: dict[str, list] = {s: [] for s in SPLITS}
            for rg in range(md.num_row_groups):
                t = pf.read_row_group(rg, columns=cols)
                if "n_tokens" in names:
                    lens = t.column("n_tokens").fill_null(0).to_numpy()
                else:
                    lens = pc.list_value_length(t.column("tokens")).fill_null(0).to_numpy()
                lens = np.asarray(lens, np.int64)
                if "split" in names:
                    split = t.column("split")
                    for s in SPLITS:
                        rows = np.flatnonzero(np.asarray(pc.equal(split, s).fill_null(False).to_numpy(), bool))
                        rows = rows[lens[rows] > 0]
                        out[s].append((f, rg, rows.astype(np.int32), lens[rows]))
                else:
                    rows = np.flatnonzero(lens > 0)
                    out[TRAIN].append((f, rg, rows.astype(np.int32), lens[rows]))
        return md, out

    def fingerprint(self) -> str:
        """A digest of what the train stream is built from: shard names (relative), row groups, rows, lengths."""
        h = hashlib.blake2b(digest_size=16)
        root = self.shards_root
        for d in self.domains:
            idx = self.index[d][TRAIN]
            h.update(d.encode() + b"\0")
            h.update("\0".join(self.files[f].removeprefix(root) for f in np.unique(idx.unit_file)).encode())
            for arr in (idx.unit_file, idx.unit_rg, idx.unit_start, idx.doc_row, idx.doc_len):
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def split(self, domain: str, split: str) -> SplitIndex:
        return self.index[domain][split]

    def tokens(self, split: str = TRAIN) -> dict[str, int]:
        """Tokens per domain in ``split``."""
        return {d: self.index[d][split].tokens for d in self.domains}

    def _unit_column(self, idx: SplitIndex, unit: int) -> tuple[pa.ListArray, np.ndarray]:
        """A unit's whole ``tokens`` column (one row group) and the rows of its indexed documents."""
        f, rg = int(idx.unit_file[unit]), int(idx.unit_rg[unit])
        a, b = int(idx.unit_start[unit]), int(idx.unit_start[unit + 1])
        rows = idx.doc_row[a:b]
        with self.fs.open_input_file(self.files[f]) as fh:
            t = pq.ParquetFile(fh, metadata=self.metadata[f]).read_row_group(rg, columns=["tokens"], use_threads=False)
        col = t.column("tokens")
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        offsets = col.offsets.to_numpy()
        lens = offsets[rows + 1].astype(np.int64) - offsets[rows]
        if not np.array_equal(lens, idx.doc_len[a:b]):
            raise ValueError(
                f"{self.files[f]} row group {rg}: `n_tokens` disagrees with the length of `tokens`; "
                "the shard was modified after indexing or written inconsistently"
            )
        return col, rows

    def read_unit(self, idx: SplitIndex, unit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A unit's token values, undecoded into documents: (values int32, start, length) per indexed document.

        ``values`` is the row group's whole ``tokens`` buffer (zero-copy from Arrow); document
        ``i`` of the unit (in index order) is ``values[start[i] : start[i] + length[i]]``.
        """
        col, rows = self._unit_column(idx, unit)
        offsets = col.offsets.to_numpy()
        starts = offsets[rows].astype(np.int64)
        lens = offsets[rows + 1].astype(np.int64) - starts
        return col.values.to_numpy(), starts, lens

    def gather(self, idx: SplitIndex, units: list[int], order: np.ndarray) -> np.ndarray:
        """The tokens of the indexed documents of ``units`` (numbered in index order, unit after
        unit), taken in ``order`` and concatenated: one array of ``token_type``.

        The documents are laid out as an Arrow list view over the decoded values and flattened
        in C++ (no per-document Python loop, the GIL released), so loading a window on a
        read-ahead thread does not hold up the thread that serves batches.
        """
        values, starts, lens, base = [], [], [], 0
        for u in units:
            col, rows = self._unit_column(idx, u)
            offsets = col.offsets.to_numpy()
            first = int(offsets[0])
            values.append(col.values.to_numpy()[first : int(offsets[-1])] if len(col) else np.zeros(0, np.int32))
            starts.append(offsets[rows].astype(np.int64) - first + base)
            lens.append(offsets[rows + 1].astype(np.int64) - offsets[rows])
            base += len(values[-1])
        if not values:
            return np.zeros(0, self.token_type)
        flat = values[0] if len(values) == 1 else np.concatenate(values)
        if flat.dtype != self.token_type:  # checked: a value outside the type (a shard rewritten) raises
            flat = pc.cast(pa.array(flat), pa.from_numpy_dtype(self.token_type)).to_numpy()
        st, ln = np.concatenate(starts)[order], np.concatenate(lens)[order]
        view = pa.LargeListViewArray if base >= 2**31 else pa.ListViewArray
        otype = np.int64 if base >= 2**31 else np.int32
        docs = view.from_arrays(pa.array(st.astype(otype)), pa.array(ln.astype(otype)), pa.array(flat))
        return docs.flatten().to_numpy()


def _fits_uint16(metadata: list[pq.FileMetaData]) -> bool:
    """Whether every row group's ``tokens`` statistics lie in [0, 65535] (False if any are missing)."""
    for md in metadata:
        leaf = next((i for i in range(md.num_columns) if md.schema.column(i).path.startswith("tokens.")), None)
        if leaf is None:
            return False
        for rg in range(md.num_row_groups):
            col = md.row_group(rg).column(leaf)
            if col.num_values == 0:
                continue
            st = col.statistics
            if st is None or not st.has_min_max or not (st.min >= 0 and st.max <= 65535):
                return False
    return True
