"""The one Arrow schema every operator, reader and sink in Sluice shares."""

from __future__ import annotations

import hashlib

import pyarrow as pa

#: Columns every document carries from the reader onwards.
BASE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("source", pa.string()),
]
BASE_SCHEMA = pa.schema(BASE_FIELDS)

#: In-flight bookkeeping columns. A row whose ``reason`` is not null has been removed by
#: ``stage``; it is carried to the end of its segment and then written under ``removed/``.
REASON = "reason"
STAGE = "stage"
DUP_OF = "dup_of"
RAW = "raw"
ERROR = "error"
TRACK_FIELDS: list[pa.Field] = [
    pa.field(REASON, pa.string()),
    pa.field(STAGE, pa.string()),
    pa.field(DUP_OF, pa.string()),
    pa.field(RAW, pa.binary()),
    pa.field(ERROR, pa.string()),
]
#: What readers emit: base columns plus the tracking columns (null for good rows).
READ_SCHEMA = pa.schema(BASE_FIELDS + TRACK_FIELDS)

#: Score and derived columns operators may add. Operators add them with these types,
#: never remove them, and fill null where a row was not scored.
SCORE_FIELDS: dict[str, pa.DataType] = {
    "ppl": pa.float64(),
    "n_tokens_ppl": pa.int64(),
    "quality": pa.float64(),
    "betr": pa.float64(),
    "dup_cluster": pa.int64(),
    "dup_cluster_size": pa.int64(),
    "tokens": pa.list_(pa.int32()),
    "n_tokens": pa.int64(),
    "split": pa.string(),
    "parent_id": pa.string(),
    "style": pa.string(),
    "synthetic": pa.bool_(),
    "generator": pa.string(),
    "rephrase_tokens_in": pa.int64(),
    "rephrase_tokens_out": pa.int64(),
    "language": pa.string(),
    "language_score": pa.float64(),
    "html": pa.string(),  # the page's HTML, kept by `extract` with keep_html: true
}

#: Columns that exist only while a run is in flight; kept shards drop them.
INTERNAL_COLUMNS = (REASON, STAGE, DUP_OF, RAW, ERROR)

#: Every column name Sluice itself writes. Any other column is input metadata: a field of the
#: input record (``url``, ``date``, ``license``…) carried unchanged through every stage. An input
#: field with one of these names (compared case-insensitively, as DuckDB compares identifiers)
#: must be renamed or left out; see pipelines.metadata.
RESERVED_COLUMNS: frozenset[str] = frozenset([f.name for f in BASE_FIELDS + TRACK_FIELDS] + list(SCORE_FIELDS))
_RESERVED_LOWER = frozenset(n.lower() for n in RESERVED_COLUMNS)

INPUT_STAGE = "input"


def is_reserved(name: str) -> bool:
    """Whether ``name`` clashes with a column Sluice writes (case-insensitively)."""
    return name.lower() in _RESERVED_LOWER


def metadata_columns(names: list[str]) -> list[str]:
    """The input-metadata columns among ``names``: those Sluice does not write, in order."""
    return [n for n in names if n not in RESERVED_COLUMNS]


def make_id(source: str, row: int) -> str:
    """Stable id for a record without an id field: a hash of ``<source>:<row>``."""
    return hashlib.blake2b(f"{source}:{row}".encode(), digest_size=12).hexdigest()


def seeded_hash(key: str, seed: int) -> int:
    """A 64-bit integer that depends only on (seed, key): BLAKE2b-64 of ``"<seed>:<key>"``.

    The one seeded hash of the curation side: the split's holdout draw, rephrasing's
    ``sample_fraction`` and BETR's sample order all use it (so they do not depend on order,
    batching or cluster size).
    """
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little")


def unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key)."""
    return seeded_hash(key, seed) / 2**64


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Set ``name`` to ``values``, replacing the column if present, appending otherwise."""
    idx = table.schema.get_field_index(name)
    if idx >= 0:
        return table.set_column(idx, name, values)
    return table.append_column(name, values)


def score_field(name: str) -> pa.Field:
    """The declared field for a score column; unknown names are an error, not a guess."""
    if name not in SCORE_FIELDS:
        raise KeyError(f"score column {name!r} is not declared in storage.schema.SCORE_FIELDS")
    return pa.field(name, SCORE_FIELDS[name])
