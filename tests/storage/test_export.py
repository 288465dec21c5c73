"""sluice export: Megatron files a reader written from Megatron's index spec reads back exactly, and MDS
datasets that MosaicML Streaming (a test-only dependency) reads back exactly."""

import hashlib
import importlib.util
import json
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.export import MDSDatasetWriter, export
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


def streaming():
    """mosaicml-streaming's ``streaming.base`` (StreamingDataset, MDSWriter, readers, encodings), or skip.

    The top-level ``streaming/__init__`` imports its vision datasets and so torchvision, which has
    no build for this CPU torch; the MDS code lives in ``streaming.base`` and needs none of it, so
    the package is entered without running that ``__init__`` (the Makefile installs streaming with
    ``--no-deps``: its pins would downgrade numpy and transformers).
    """
    if "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("mosaicml-streaming is not installed (make setup installs it)")
        pkg = types.ModuleType("streaming")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["streaming"] = pkg
    import streaming.base
    import streaming.base.format
    import streaming.base.format.mds.encodings

    return streaming.base


def read_mds(directory: Path, split: str | None = None):
    """Every sample of an MDS dataset, twice: by iterating ``StreamingDataset(local=…, remote=None)``
    unshuffled, and by Streaming's per-shard readers built from index.json (both must agree)."""
    sb = streaming()
    root = directory if split is None else directory / split
    index = json.loads((root / "index.json").read_text())
    ds = sb.StreamingDataset(
        local=str(directory), remote=None, split=split, shuffle=False, batch_size=1, validate_hash="sha256"
    )
    by_dataset = list(ds)  # first: it decompresses zstd shards next to themselves, as it does for a trainer
    by_reader = []
    for obj in index["shards"]:
        reader = sb.format.reader_from_json(str(directory), split, obj)
        by_reader += [reader.get_item(i) for i in range(reader.samples)]
    assert len(by_dataset) == len(by_reader)
    for a, b in zip(by_dataset, by_reader):
        assert a.keys() == b.keys() and a["id"] == b["id"] and np.array_equal(a["tokens"], b["tokens"])
    return by_reader, index


def sha(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_mds_datasets_hold_every_document_in_shard_order(tokenized):
    root = tokenized
    args = ["export", str(root / "run"), "--format", "mds", "-o", str(root / "mds"), "--shard-mb", "0.004"]
    res = CliRunner().invoke(app, [*args, "--with-text"])
    assert res.exit_code == 0, res.output
    rec = json.loads((root / "mds" / "export.json").read_text())
    assert rec["format"] == "mds" and rec["mds"] == {"size_limit": 4194, "compression": None, "with_text": True}
    assert rec["source"]["recipe_hash"] and rec["source"]["shards"]
    shards = read_shards(str(root / "run" / "shards")).to_pylist()
    assert sum(f["documents"] for f in rec["files"]) == len(shards) == 37
    assert {(f["domain"], f["split"]) for f in rec["files"]} <= {(d, s) for d in "ab" for s in ("train", "holdout")}
    for f in rec["files"]:
        assert f["dir"] == f"{f['domain']}/{f['split']}" and f["dtype"] == "uint16"  # SmolLM2's ids fit uint16
        samples, index = read_mds(root / "mds" / f["domain"], f["split"])
        want = [d for d in shards if d["domain"] == f["domain"] and d["split"] == f["split"]]
        assert [s["id"] for s in samples] == [d["id"] for d in want] and len(want) == f["documents"]
        for s, d in zip(samples, want):
            assert s["tokens"].dtype == np.uint16 and s["tokens"].tolist() == d["tokens"]
            assert s["n_tokens"] == d["n_tokens"] == len(d["tokens"]) and s["text"] == d["text"]
        assert f["tokens"] == sum(d["n_tokens"] for d in want)
        assert all(s["column_names"] == ["id", "n_tokens", "text", "tokens"] for s in index["shards"])
        assert [s["samples"] for s in index["shards"]] == [x["samples"] for x in f["shards"]]
        # the lineage: every file written, with its bytes and sha256; nothing else in the directory
        assert f["index"] == {"path": f"{f['dir']}/index.json", **sha(root / "mds" / f["dir"] / "index.json")}
        for x in f["shards"]:
            assert {"bytes": x["bytes"], "sha256": x["sha256"]} == sha(root / "mds" / x["path"])
        on_disk = {p.name for p in (root / "mds" / f["dir"]).iterdir()}
        assert on_disk == {"index.json"} | {Path(x["path"]).name for x in f["shards"]}
    train = max(rec["files"], key=lambda f: f["documents"])
    assert len(train["shards"]) > 3  # a 4 KiB limit cuts the largest split into many shards
    assert all(x["bytes"] <= 4194 for f in rec["files"] for x in f["shards"] if x["samples"] > 1)


def test_mds_zstd_export_replaces_an_earlier_export(tokenized, tmp_path):
    root, out = tokenized, tmp_path / "out"
    assert CliRunner().invoke(app, ["export", str(root / "run"), "-o", str(out)]).exit_code == 0
    assert list(out.glob("*.bin"))
    mega = {f["prefix"]: f["documents"] for f in json.loads((out / "export.json").read_text())["files"]}
    args = ["export", str(root / "run"), "--format", "mds", "-o", str(out), "--compression", "zstd:5"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "export.json").read_text())
    assert not list(out.glob("*.bin")) and not list(out.glob("*.idx"))  # the megatron export is replaced
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "export.json"]
    for f in rec["files"]:
        assert f["columns"] == {"id": "str", "n_tokens": "int", "tokens": "ndarray:uint16"}
        for x in f["shards"]:
            assert x["path"].endswith(".mds.zstd")
            assert {"bytes": x["bytes"], "sha256": x["sha256"]} == sha(out / x["path"])
        samples, index = read_mds(out / f["domain"], f["split"])
        assert {s["compression"] for s in index["shards"]} == {"zstd:5"}
        assert len(samples) == f["documents"] == mega[f"{f['domain']}_{f['split']}"]
        assert sum(int(s["n_tokens"]) for s in samples) == f["tokens"]


def test_mds_export_refuses_to_write_into_the_run_and_checks_its_options(tokenized, tmp_path):
    root = tokenized
    before = sorted(p.relative_to(root / "run") for p in (root / "run").rglob("*"))
    res = CliRunner().invoke(app, ["export", str(root / "run"), "--format", "mds", "-o", str(root / "run" / "x")])
    assert res.exit_code == 2 and "overlaps the run" in res.output
    res = CliRunner().invoke(app, ["export", str(root / "run"), "--format", "mds", "-o", str(root / "run")])
    assert res.exit_code == 2 and "overlaps the run" in res.output
    assert sorted(p.relative_to(root / "run") for p in (root / "run").rglob("*")) == before
    for extra, message in [
        (["--format", "mds", "--compression", "gzip"], "compression 'gzip' is not supported"),
        (["--format", "mds", "--shard-mb", "5000"], "outside (0, 4096)"),
        (["--with-text"], "apply to --format mds only"),
        (["--format", "parquet"], "format 'parquet' is not supported"),
    ]:
        res = CliRunner().invoke(app, ["export", str(root / "run"), "-o", str(tmp_path / "o"), *extra])
        assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_mds_writer_bytes_equal_streaming_mdswriter(tmp_path):
    sb = streaming()
    rng = np.random.default_rng(0)
    lengths = [1, 255, 256, 300, 70_000, *rng.integers(1, 400, 40).tolist()]  # every shape-dtype width
    samples = [
        {"id": f"d{i}", "n_tokens": n, "tokens": rng.integers(0, 2**16, n).astype(np.uint16), "text": "é ü" * i}
        for i, n in enumerate(lengths)
    ]
    columns = {"id": "str", "n_tokens": "int", "text": "str", "tokens": "ndarray:uint16"}
    for compression in (None, "zstd"):
        ref, ours = tmp_path / f"ref-{compression}", tmp_path / f"ours-{compression}"
        kw = {"columns": columns, "size_limit": 4096, "compression": compression}
        with sb.MDSWriter(out=str(ref), hashes=["sha256"], **kw) as w:
            for s in samples:
                w.write(s)
        ours.mkdir()
        w = MDSDatasetWriter(ours, **kw)
        for s in samples:
            w.write(s)
        w.finish()
        names = sorted(p.name for p in ref.iterdir())
        assert names == sorted(p.name for p in ours.iterdir()) and len(names) > 5
        if compression is None:
            assert all((ref / n).read_bytes() == (ours / n).read_bytes() for n in names)
        else:  # zstd frames may differ between zstd builds; the raw shards they hold may not
            import zstandard

            ri, oi = (json.loads((d / "index.json").read_text()) for d in (ref, ours))
            assert [{**s, "zip_data": None} for s in ri["shards"]] == [{**s, "zip_data": None} for s in oi["shards"]]
            for n in [n for n in names if n.endswith(".zstd")]:
                raw = [zstandard.ZstdDecompressor().decompress((d / n).read_bytes()) for d in (ref, ours)]
                assert raw[0] == raw[1]
        got, _ = read_mds(ours)
        assert [g["id"] for g in got] == [s["id"] for s in samples]
        assert all(np.array_equal(g["tokens"], s["tokens"]) and g["text"] == s["text"] for g, s in zip(got, samples))


def test_mds_writes_empty_token_arrays_that_streaming_decodes(tmp_path):
    sb = streaming()
    columns = {"id": "str", "tokens": "ndarray:int32"}
    w = MDSDatasetWriter(tmp_path, columns=columns, size_limit=1 << 20, compression=None)
    for i, toks in enumerate([[5, 6], [], [7]]):
        w.write({"id": str(i), "tokens": np.array(toks, np.int32)})
    w.finish()
    got, _ = read_mds(tmp_path)
    assert [g["tokens"].tolist() for g in got] == [[5, 6], [], [7]] and got[1]["tokens"].dtype == np.int32
    assert sb.format.mds.encodings.mds_decode("ndarray:int32", b"\x04\x00").shape == (0,)


def test_mds_int32_tokens_without_splits_then_a_split_export_replaces_it(tmp_path):
    """A run without a split column whose largest id (70,000) is only found by reading: no Parquet statistics."""
    run = tmp_path / "run"
    (run / "shards" / "domain=x").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"recipe_hash": "r", "shards": []}))
    docs = [[1, 2, 3], [65_535], [70_000, 4], [9]]
    typ = pa.list_(pa.int32())
    for k, part in enumerate([docs[:2], docs[2:]]):
        table = pa.table({"id": [f"{k}-{i}" for i in range(len(part))], "tokens": pa.array(part, typ)})
        pq.write_table(table, run / "shards" / "domain=x" / f"part-{k:05d}.parquet", write_statistics=k == 0)
    rec = export(str(run), str(tmp_path / "out"), "mds")
    [f] = rec["files"]
    assert f["dir"] == "x" and f["split"] is None and f["dtype"] == "int32" and f["tokens"] == 7
    got, _ = read_mds(tmp_path / "out" / "x")
    assert [g["tokens"].tolist() for g in got] == docs and got[0]["tokens"].dtype == np.int32
    assert [g["id"] for g in got] == ["0-0", "0-1", "1-0", "1-1"] and [g["n_tokens"] for g in got] == [3, 1, 2, 1]

    # the same domain from a run with splits, into the same directory: x/ now holds only train/ and holdout/
    split_run = tmp_path / "split-run"
    (split_run / "shards" / "domain=x").mkdir(parents=True)
    (split_run / "manifest.json").write_text(json.dumps({"recipe_hash": "s", "shards": []}))
    table = pa.table(
        {"id": ["p", "q", "r"], "tokens": pa.array([[1], [2, 3], [4]], typ), "split": ["train", "holdout", "train"]}
    )
    pq.write_table(table, split_run / "shards" / "domain=x" / "part-00000.parquet")
    rec = export(str(split_run), str(tmp_path / "out"), "mds")
    assert [(f["dir"], f["documents"], f["dtype"]) for f in rec["files"]] == [
        ("x/train", 2, "uint16"),
        ("x/holdout", 1, "uint16"),
    ]
    assert sorted(p.name for p in (tmp_path / "out" / "x").iterdir()) == ["holdout", "train"]
    assert [g["id"] for g in read_mds(tmp_path / "out" / "x", "train")[0]] == ["p", "r"]
