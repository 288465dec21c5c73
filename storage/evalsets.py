"""Eval sets: the one file format for text that runs are compared against (DESIGN.md §7).

BETR targets, ``decontaminate``, ablation and mixture-search eval sets and the reference
trainer's ``--eval`` all read it. A set is a file, a directory or a glob, like a recipe input:

- JSONL (plain, ``.gz``, ``.zst``) or Parquet, one record per example. The example's text is
  its ``text`` field when it has one; otherwise its fields concatenated as BETR does
  (``question``, choices, ``answer``… — every string or list of strings in record order, except
  id-like keys and ``domain``), or exactly ``fields`` in that order when given.
- any other file is one example (``text`` format: a document per file).

An example's domain is its record's ``domain`` field, else the set's ``domain``, else the
file's stem. Records without text are an error naming the file and line: an eval set is
trusted data, so nothing in it is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from storage.fs import detect_format, list_input, resolve

#: keys that name an example rather than hold its text
ID_KEYS = frozenset({"id", "_id", "idx", "uid", "qid", "example_id", "doc_id", "domain"})


class EvalSetError(ValueError):
    """An eval set that cannot be read as examples, with the file and line."""


@dataclass(frozen=True)
class EvalExample:
    """One example: its text, domain and where it came from (``file:line``)."""

    text: str
    domain: str
    source: str


def record_text(rec: dict[str, Any], fields: list[str] | None = None) -> str:
    """One example as text: ``text`` if present, else its fields concatenated (question, choices, answer, …).

    With ``fields`` those fields in that order; otherwise every string (or list of strings)
    value in record order, except id-like keys. Lists are joined with spaces.
    """
    if fields is None and isinstance(rec.get("text"), str):
        return rec["text"].strip()
    keys = fields if fields is not None else [k for k in rec if k.lower() not in ID_KEYS]
    parts: list[str] = []
    for k in keys:
        v = rec.get(k)
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            parts.extend(str(x) for x in v if isinstance(x, (str, int, float)))
        elif fields is not None and isinstance(v, (int, float)):
            parts.append(str(v))
    return " ".join(p.strip() for p in parts if p and p.strip())


def _records(path: str) -> Iterator[tuple[int, Any]]:
    fs, p = resolve(path)
    fmt = detect_format(path)
    if fmt == "parquet":
        table = pq.read_table(fs.open_input_file(p))
        yield from enumerate(table.to_pylist(), 1)
        return
    if fmt == "jsonl":
        with fs.open_input_stream(p, compression="detect") as f:
            for n, line in enumerate(f.read().decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except ValueError as e:
                        raise EvalSetError(f"{path}:{n}: not valid JSON ({e})") from None
        return
    with fs.open_input_stream(p, compression="detect") as f:
        yield 1, {"text": f.read().decode("utf-8", errors="replace")}


def load_eval_set(
    path: str, domain: str | None = None, fields: list[str] | None = None, limit: int | None = None
) -> list[EvalExample]:
    """The examples of one eval set (a file, a directory or a glob), in file and line order."""
    files = list_input(path).files
    if not files:
        raise EvalSetError(f"eval set {path!r}: no files match")
    out: list[EvalExample] = []
    for file in files:
        for n, rec in _records(file):
            if not isinstance(rec, dict):
                raise EvalSetError(f"{file}:{n}: an example must be a JSON object")
            text = record_text(rec, fields)
            if not text:
                raise EvalSetError(f"{file}:{n}: the example has no text (a `text` field, or question/answer fields)")
            d = rec.get("domain") if isinstance(rec.get("domain"), str) else domain or Path(file).name.split(".")[0]
            out.append(EvalExample(text, d, f"{file}:{n}"))
            if limit is not None and len(out) >= limit:
                return out
    return out


def pack(token_lists: list[np.ndarray], seq_len: int, eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Examples' token ids (EOS after each when given) packed into rows of ``seq_len`` tokens, the
    last row padded with 0: (tokens [n, seq_len], real tokens per row [n]). The same examples
    always pack the same way, so every model compared is scored on the same tokens."""
    parts = [np.append(t, eos) if eos is not None else np.asarray(t) for t in token_lists]
    flat = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    n = max(1, -(-flat.size // seq_len))
    rows = np.zeros(n * seq_len, np.int64)
    rows[: flat.size] = flat
    valid = np.full(n, seq_len, np.int64)
    valid[-1] = flat.size - (n - 1) * seq_len
    return rows.reshape(n, seq_len), valid
