"""sluice export --format megatron: files a reader written from Megatron's index spec reads back exactly."""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from tests.conftest import prose, write_jsonl


def read_megatron(prefix):
    """Megatron-LM's MMapIndexedDataset layout, read from its spec (not from Sluice's writer)."""
    idx = Path(f"{prefix}.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00" and struct.unpack("<Q", idx[9:17])[0] == 1
    dtype = {4: np.int32, 8: np.uint16}[idx[17]]
    n, docs = struct.unpack("<QQ", idx[18:34])
    lengths = np.frombuffer(idx, np.int32, n, 34)
    pointers = np.frombuffer(idx, np.int64, n, 34 + 4 * n)
    doc_idx = np.frombuffer(idx, np.int64, docs, 34 + 12 * n)
    assert 34 + 12 * n + 8 * docs == len(idx)
    data = np.memmap(f"{prefix}.bin", dtype=dtype, mode="r")
    seqs = [np.asarray(data[p // data.itemsize : p // data.itemsize + ln]) for p, ln in zip(pointers, lengths)]
    return seqs, doc_idx, dtype


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("export")
    write_jsonl(root / "in" / "a.jsonl", [{"id": f"a{i}", "text": prose(i) + f" {i}"} for i in range(25)])
    write_jsonl(root / "in" / "b.jsonl", [{"id": f"b{i}", "text": prose(i + 5)} for i in range(12)])
    text = (
        f"inputs:\n  - {{path: {root}/in/a.jsonl, domain: a, id_field: id}}\n"
        f"  - {{path: {root}/in/b.jsonl, domain: b, id_field: id}}\n"
        "stages:\n  - {op: tokenize}\n  - {op: split, holdout_fraction: 0.2}\n"
        f"output: {{dir: {root}/run, shard_mb: 0.002}}\n"
    )
    run(parse_recipe(text), recipe_text=text)
    return root


def test_megatron_files_hold_every_document_in_shard_order(tokenized):
    root = tokenized
    res = CliRunner().invoke(app, ["export", str(root / "run"), "-o", str(root / "mega")])
    assert res.exit_code == 0, res.output
    rec = json.loads((root / "mega" / "export.json").read_text())
    shards = read_shards(str(root / "run" / "shards")).to_pylist()
    assert sum(f["documents"] for f in rec["files"]) == len(shards) == 37
    for f in rec["files"]:
        seqs, doc_idx, dtype = read_megatron(root / "mega" / f["prefix"])
        want = [np.array(d["tokens"]) for d in shards if d["domain"] == f["domain"] and d["split"] == f["split"]]
        assert len(seqs) == len(want) == f["documents"] and dtype == np.uint16  # SmolLM2's ids fit uint16
        assert all(np.array_equal(s, w) for s, w in zip(seqs, want))
        assert doc_idx.tolist() == list(range(len(seqs) + 1))
        for ext in ("bin", "idx"):
            data = (root / "mega" / f"{f['prefix']}.{ext}").read_bytes()
            assert f[ext] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert {(f["domain"], f["split"]) for f in rec["files"]} <= {(d, s) for d in "ab" for s in ("train", "holdout")}
    assert rec["source"]["recipe_hash"] and rec["source"]["shards"]


def test_export_refuses_to_write_into_the_run_or_a_foreign_directory(tokenized, tmp_path):
    root = tokenized
    res = CliRunner().invoke(app, ["export", str(root / "run"), "-o", str(root / "run" / "mega")])
    assert res.exit_code == 2 and "overlaps the run" in res.output
    (tmp_path / "mine.txt").write_text("x")
    res = CliRunner().invoke(app, ["export", str(root / "run"), "-o", str(tmp_path)])
    assert res.exit_code == 2 and "did not export" in res.output and (tmp_path / "mine.txt").exists()
