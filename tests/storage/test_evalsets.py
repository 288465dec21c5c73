"""Eval sets: one format for every comparison against target text (DESIGN.md §7)."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.evalsets import EvalSetError, load_eval_set, pack, record_text


def test_text_field_or_question_answer_fields_domain_per_record_set_or_file(tmp_path):
    lines = [
        {"id": 1, "question": "What is 2+2?", "choices": ["3", "4"], "answer": "4"},
        {"text": "  A plain example.  ", "domain": "prose", "source": "ignored when text is present"},
    ]
    (tmp_path / "arith.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(x) for x in lines).encode()))
    got = load_eval_set(str(tmp_path / "arith.jsonl.gz"))
    assert [(e.text, e.domain) for e in got] == [("What is 2+2? 3 4 4", "arith"), ("A plain example.", "prose")]
    assert got[0].source.endswith("arith.jsonl.gz:1")
    assert [e.domain for e in load_eval_set(str(tmp_path / "arith.jsonl.gz"), domain="math")] == ["math", "prose"]
    assert record_text(lines[0], ["answer", "question"]) == "4 What is 2+2?"


def test_parquet_and_text_files(tmp_path):
    pq.write_table(pa.table({"text": ["one", "two"], "domain": ["a", None]}), tmp_path / "set.parquet")
    got = load_eval_set(str(tmp_path / "set.parquet"), "b")
    assert [(e.text, e.domain) for e in got] == [("one", "a"), ("two", "b")]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.txt").write_text("first document")
    (tmp_path / "docs" / "y.rst").write_text("second")
    got = load_eval_set(str(tmp_path / "docs"), "manual")
    assert [(e.text, e.domain) for e in got] == [("first document", "manual"), ("second", "manual")]


def test_bad_examples_are_errors_naming_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"id": 3}\n')
    with pytest.raises(EvalSetError, match=r"bad\.jsonl:2: the example has no text"):
        load_eval_set(str(tmp_path / "bad.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(EvalSetError, match=r"broken\.jsonl:2: not valid JSON"):
        load_eval_set(str(tmp_path / "broken.jsonl"))
    with pytest.raises(EvalSetError, match="no files match"):
        load_eval_set(str(tmp_path / "missing.jsonl"))


def test_pack_keeps_every_token_once_in_order():
    rows, valid = pack([np.array([1, 2, 3]), np.array([4, 5])], seq_len=4, eos=0)
    assert rows.tolist() == [[1, 2, 3, 0], [4, 5, 0, 0]] and valid.tolist() == [4, 3]
    rows, valid = pack([np.array([7, 8])], seq_len=2, eos=None)
    assert rows.tolist() == [[7, 8]] and valid.tolist() == [2]
