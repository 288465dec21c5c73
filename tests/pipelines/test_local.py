"""In-process runs (pipelines.local): Ray Data's batch semantics, the same decisions as a Ray run, resume across
engines, and what ``auto`` chooses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.demo_data import build
from pipelines.local import LocalDataset, choose_engine, input_bytes, local_max_bytes
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from tests.conftest import prose, write_jsonl
from tests.operators.test_classifier import TOPICS, topic_doc
from tests.operators.test_perplexity import FLUENT, shuffled

SLUICE = str(Path(sys.executable).parent / "sluice")
DEMO = Path(__file__).parents[2] / "pipelines" / "recipes" / "demo.yaml"


def _blocks(*sizes: int) -> list[pa.Table]:
    start, out = 0, []
    for n in sizes:
        out.append(pa.table({"k": [i % 3 for i in range(start, start + n)], "v": list(range(start, start + n))}))
        start += n
    return out


def test_batches_follow_ray_data_fusion_and_bundling():
    ds = LocalDataset(_blocks(5, 0, 7))
    assert [b.num_rows for b in ds.iter_batches()] == [5, 7]  # an empty block is never handed over
    out = ds.map_batches(
        lambda b, add: b.set_column(1, "v", pa.array([x + add for x in b["v"].to_pylist()])),
        batch_size=4,
        fn_kwargs={"add": 100},
    )
    # bundles of whole blocks until 4 rows ([5], [7]), each cut into batches of 4; one output block per bundle
    assert [[b.num_rows for b in g] for g in out.groups] == [[4, 1], [4, 3]]
    assert [b.num_rows for b in out.blocks] == [5, 7]
    assert [v for b in out.blocks for v in b["v"].to_pylist()] == list(range(100, 112))
    seen = []

    class Counter:  # a class is built once, like an actor, then called per batch
        built = 0

        def __init__(self, tag):
            Counter.built += 1
            self.tag = tag

        def __call__(self, batch):
            seen.append((self.tag, batch.num_rows))
            return batch

    small = LocalDataset(_blocks(3, 2, 4, 1))  # bundles [3, 2] and [4, 1]: batches 4+1 and 4+1, never across bundles
    small.map_batches(Counter, fn_constructor_kwargs={"tag": "x"}, batch_size=4)
    assert Counter.built == 1 and seen == [("x", 4), ("x", 1), ("x", 4), ("x", 1)]
    # a task map runs on each block a read task made; the task's output is then one block
    read = LocalDataset.of_tasks([_blocks(2, 3), _blocks(4)])
    calls = []
    mapped = read.map_batches(lambda b: calls.append(b.num_rows) or b)
    assert calls == [2, 3, 4] and [b.num_rows for b in mapped.blocks] == [5, 4]
    assert [b.num_rows for b in ds.repartition(target_num_rows_per_block=3).blocks] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="pyarrow"):
        ds.map_batches(lambda b: b, batch_format="pandas")
    with pytest.raises(ValueError, match="by row count only"):
        ds.repartition(4, shuffle=True)


def test_map_groups_gets_each_key_whole_in_key_order():
    groups = (
        LocalDataset(_blocks(4, 5))
        .groupby("k")
        .map_groups(lambda g: pa.table({"k": [g["k"][0].as_py()], "vs": [sorted(g["v"].to_pylist())]}))
    )
    rows = [r for b in groups.blocks for r in b.to_pylist()]
    assert rows == [{"k": 0, "vs": [0, 3, 6]}, {"k": 1, "vs": [1, 4, 7]}, {"k": 2, "vs": [2, 5, 8]}]
    assert LocalDataset([]).groupby("k").map_groups(lambda g: g).blocks == []
    nulls = (
        LocalDataset([pa.table({"k": [1, None, 2, 2, None]})])
        .groupby("k")
        .map_groups(lambda g: pa.table({"n": [g.num_rows], "k": [g["k"][0].as_py()]}))
    )
    assert [r for b in nulls.blocks for r in b.to_pylist()] == [{"n": 1, "k": 1}, {"n": 2, "k": 2}, {"n": 2, "k": None}]


def test_compressed_inputs_count_as_what_they_become_in_memory():
    assert input_bytes({"a.jsonl": [100, 1], "b.jsonl.gz": [100, 1], "c.parquet": [10, 1], "d": [None, None]}) == 540


def test_choose_engine(monkeypatch):
    monkeypatch.delenv("SLUICE_ENGINE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray
    from ray._private import services

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    monkeypatch.setattr("pipelines.cluster.local_cpus", lambda: 2)
    assert local_max_bytes(2) == 256 << 20 and local_max_bytes(8) == 64 << 20 and local_max_bytes(512) == 16 << 20
    assert choose_engine(None, 1000) == "local" and choose_engine(None, 256 << 20) == "local"
    assert choose_engine(None, (256 << 20) + 1) == "ray"
    assert choose_engine("ray", 10) == "ray" and choose_engine("local", 10**12) == "local"
    monkeypatch.setenv("SLUICE_ENGINE", "ray")
    assert choose_engine(None, 10) == "ray"
    monkeypatch.delenv("SLUICE_ENGINE")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster to join: never silently in process
    assert choose_engine(None, 10) == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: "10.0.0.1:6379")  # `ray start` ran
    assert choose_engine(None, 10) == "ray"
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a Ray session in this process (a notebook)
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    assert choose_engine(None, 10) == "ray"
    with pytest.raises(ValueError, match="engine must be one of auto, local, ray, got 'spark'"):
        choose_engine("spark", 10)


# ---------------------------------------------------------------- the same decisions as a Ray run
def _outputs(out: Path) -> tuple[list, list, list]:
    """Kept and removed rows (in written order, columns by name) and each stage's counts and report, timings
    left out."""

    def rows(sub: str) -> list:  # in written order: partition by partition, file by file
        files = sorted((out / sub).glob("*/*.parquet"))
        return [dict(sorted(r.items())) for f in files for r in read_shards(str(f)).to_pylist()]

    m = json.loads((out / "manifest.json").read_text())
    stages = []
    for s in m["stages"]:
        report = {k: v for k, v in (s.get("report") or {}).items() if k != "seconds"}
        stages.append((s["stage"], s["rows_in"], s["rows_out"], s["removed"], report))
    return rows("shards"), rows("removed"), stages


def _both(text: str, tmp_path: Path) -> dict:
    """Run the recipe ``text`` (OUT in place of its output directory) with each engine; compare everything."""
    manifests = {}
    for engine in ("ray", "local"):
        body = text.replace("OUT", str(tmp_path / engine))
        manifests[engine] = run(parse_recipe(body), recipe_text=body, engine=engine)
    assert manifests["local"]["cluster"]["engine"] == "local" and manifests["ray"]["cluster"]["engine"] == "ray"
    kept_r, removed_r, stages_r = _outputs(tmp_path / "ray")
    kept_l, removed_l, stages_l = _outputs(tmp_path / "local")
    assert stages_l == stages_r
    assert removed_l == removed_r
    assert kept_l == kept_r
    assert manifests["local"]["conservation"] == manifests["ray"]["conservation"]
    return manifests["local"]


@pytest.mark.usefixtures("ray_session")
def test_demo_recipe_in_process_equals_ray(tmp_path):
    build(tmp_path / "demo", max_code=40)
    text = DEMO.read_text().replace("data/demo", str(tmp_path / "demo")).replace("out/demo", "OUT")
    m = _both(text, tmp_path)
    stages = {s["stage"]: s for s in m["stages"]}
    assert stages["minhash_dedup"]["removed"] and stages["exact_dedup"]["removed"]  # the steps had work to do


@pytest.mark.usefixtures("ray_session")
def test_ids_dedup_and_a_model_percentile_band_in_process_equal_ray(tmp_path):
    docs = [{"id": f"f{i}", "text": t} for i, t in enumerate(FLUENT)]
    docs += [{"id": f"s{i}", "text": shuffled(t, i)} for i, t in enumerate(FLUENT)]
    docs += [{"id": "f0", "text": "a repeated id, second file"}, {"id": "x1", "text": FLUENT[1]}]
    docs += [{"id": f"n{i}", "text": prose(3) + f" ending {i}."} for i in range(3)]  # near duplicates
    write_jsonl(tmp_path / "in" / "a.jsonl", docs[:8])
    write_jsonl(tmp_path / "in" / "b.jsonl", docs[8:])
    text = f"""inputs:
  - {{path: "{tmp_path}/in/*.jsonl", domain: web, id_field: id, on_duplicate_id: remove}}
stages:
  - {{op: exact_dedup}}
  - {{op: minhash_dedup, threshold: 0.7, ngram: 3, verify: false}}
  - {{op: perplexity, max_tokens: 24, batch_size: 4, keep: {{percentile_band: [20, 80]}}}}
output: {{dir: "OUT", shard_mb: 0.002}}
"""
    m = _both(text, tmp_path)
    removed = {k for s in m["stages"] for k in s["removed"]}
    assert {"input_duplicate_id", "exact_duplicate", "minhash_duplicate", "ppl_above_band"} <= removed


@pytest.mark.usefixtures("ray_session")
def test_a_model_stage_scores_the_same_batches_in_process(tmp_path):
    """Files of 30, 240 and 20 documents: Ray bundles whole blocks into the model's batches of 256 rows
    (256 + 14, then 20), and so must an in-process run, or scores differ in their last digits."""
    import random

    rng = random.Random(0)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "near",
        "the",
        "river",
        "bank",
        "at",
        "dawn",
    ]
    for name, n in (("a", 30), ("b", 240), ("c", 20)):
        docs = [{"id": f"{name}{i:03d}", "text": " ".join(rng.choices(words, k=rng.randint(2, 9)))} for i in range(n)]
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", docs)
    text = f"""inputs: [{{path: "{tmp_path}/in/*.jsonl", domain: web, id_field: id}}]
stages: [{{op: perplexity, max_tokens: 8, batch_size: 32}}]
output: {{dir: "OUT", shard_mb: 1}}
"""
    _both(text, tmp_path)  # kept rows compared column by column: ppl included, exactly


@pytest.mark.usefixtures("ray_session")
def test_betr_in_process_equals_ray(tmp_path):
    targets = [
        {"question": f"How do I {w} it?", "answer": topic_doc("cooking", 900 + i, 8)}
        for i, w in enumerate(TOPICS["cooking"][:6])
    ]
    write_jsonl(tmp_path / "targets.jsonl", targets)
    write_jsonl(
        tmp_path / "in" / "a.jsonl",
        [{"id": f"{t[0]}{i}", "text": topic_doc(t, i, 6)} for t in TOPICS for i in range(8)],
    )
    text = f"""inputs:
  - {{path: "{tmp_path}/in/a.jsonl", domain: web, id_field: id}}
stages:
  - op: betr
    targets: "{tmp_path}/targets.jsonl"
    sample_size: 32
    keep_fraction: 0.3
    min_count: 1
    epoch: 5
    bucket: 20000
output: {{dir: "OUT", shard_mb: 0.002}}
"""
    m = _both(text, tmp_path)
    assert m["stages"][1]["removed"] == {"betr_below_cutoff": m["stages"][1]["rows_in"] - m["stages"][1]["rows_out"]}


@pytest.mark.usefixtures("ray_session")
def test_warc_text_and_parquet_inputs_in_process_equal_ray(tmp_path):
    import pyarrow.parquet as pq

    from tests.pipelines.test_warc import write_warc

    for d in ("crawl", "notes"):
        (tmp_path / d).mkdir()
    write_warc(tmp_path / "crawl" / "a.warc.gz")
    for i in range(3):
        (tmp_path / "notes" / f"n{i}.txt").write_text(prose(i % 2))
    pq.write_table(
        pa.table(
            {
                "id": [f"p{i}" for i in range(4)],
                "text": [prose(i % 2) for i in range(4)],
                "year": [2020, 2021, 2022, None],
            }
        ),
        tmp_path / "t.parquet",
    )
    text = f"""inputs:
  - {{path: "{tmp_path}/crawl/*.warc.gz", format: warc, domain: web}}
  - {{path: "{tmp_path}/notes/", format: text, domain: notes}}
  - {{path: "{tmp_path}/t.parquet", domain: tables, id_field: id}}
stages:
  - {{op: extract, domains: [web]}}
  - {{op: language_id, languages: [en, fr, de]}}
  - {{op: exact_dedup}}
output: {{dir: "OUT", shard_mb: 0.002}}
"""
    m = _both(text, tmp_path)
    assert (m["conservation"]["read"], m["conservation"]["kept"]) == (19, 8)
    assert m["stages"][0]["removed"]["input_not_response"] == 3  # the WARC's records told apart in process too
    assert m["stages"][-1]["removed"] == {"exact_duplicate": 5}  # across text files and Parquet rows


# ---------------------------------------------------------------- resume, and the command line
@pytest.mark.usefixtures("ray_session")
def test_a_run_resumes_across_engines(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": prose(i % 4)} for i in range(12)])
    text = f"""inputs: [{{path: "{tmp_path}/in.jsonl", domain: web, id_field: id}}]
stages: [{{op: normalize}}, {{op: exact_dedup}}, {{op: gopher_quality}}]
output: {{dir: "{tmp_path}/out", shard_mb: 0.002}}
"""
    first = run(parse_recipe(text), recipe_text=text, engine="local")
    assert first["conservation"]["ok"] and first["conservation"]["removed"] == 8
    again = run(parse_recipe(text), recipe_text=text, engine="ray")  # same fingerprints: nothing re-runs
    assert [s["reused"] for s in again["segments"]] == [True, True]
    assert again["shards"] == first["shards"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLUICE_ENGINE")}
    return subprocess.run([SLUICE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_the_command_runs_small_inputs_in_process_unless_told(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": prose(i % 3)} for i in range(6)])
    (tmp_path / "r.yaml").write_text(
        "inputs: [{path: in.jsonl, domain: web, id_field: id}]\nstages: [{op: exact_dedup}]\noutput: {dir: out}\n"
    )
    res = _cli("curate", "r.yaml", "-v", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["cluster"]["engine"] == "local" and m["conservation"]["kept"] == 3
    assert "engine: in this process (no Ray)" in res.stderr
    assert _cli("report", "out", cwd=tmp_path).returncode == 0
    assert "<td>in process (no Ray)</td>" in (tmp_path / "out" / "report.html").read_text()  # the report says so
    bad = _cli("curate", "r.yaml", "--engine", "spark", cwd=tmp_path)
    assert bad.returncode == 2 and "--engine: engine must be one of auto, local, ray, got 'spark'" in bad.stderr


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_stage_that_does_not_fit_the_data_is_one_clear_message(tmp_path, engine):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": prose(1)}])
    (tmp_path / "words.txt").write_text("casino\n")
    (tmp_path / "r.yaml").write_text(
        "inputs: [{path: in.jsonl, domain: web}]\n"
        "stages: [{op: url_filter, block_words: words.txt}]\noutput: {dir: out}\n"
    )
    res = _cli("curate", "r.yaml", "--engine", engine, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "the data does not fit the recipe: url_filter: the data has no 'url' column" in res.stderr
    assert "Traceback" not in res.stderr


def test_runs_in_one_process_never_reuse_each_others_whole_dataset_decisions(tmp_path):
    """Chains are cached per process: a second in-process run must dedup with its own table, not the first's.
    The two runs' tables differ in one middle row only (30 groups: a table's repr shows a few rows)."""
    from pipelines import chain

    for name, tail in (("first", ""), ("second", " Changed.")):
        docs = [{"id": f"d{i:02d}", "text": prose(i) + (tail if i == 15 else "")} for i in range(60)]
        docs += [{"id": f"x{i:02d}", "text": prose(i) + (tail if i == 15 else "")} for i in range(30)]
        write_jsonl(tmp_path / name / "in.jsonl", docs)
        text = f"""inputs: [{{path: "{tmp_path}/{name}/in.jsonl", domain: web, id_field: id}}]
stages: [{{op: exact_dedup}}]
output: {{dir: "{tmp_path}/{name}/out"}}
"""
        run(parse_recipe(text), recipe_text=text, engine="local")
        assert not [k for k in chain._CHAINS if k not in chain._MODEL_CHAINS]  # released after the run
        removed = read_shards(str(tmp_path / name / "out" / "removed")).to_pylist()
        assert {r["id"]: r["dup_of"] for r in removed} == {f"x{i:02d}": f"d{i:02d}" for i in range(30)}


def test_empty_and_all_removed_inputs_in_process(tmp_path):
    write_jsonl(tmp_path / "empty.jsonl", [])
    write_jsonl(tmp_path / "short.jsonl", [{"id": f"s{i}", "text": "too short"} for i in range(3)])
    for name in ("empty", "short"):
        text = f"""inputs: [{{path: "{tmp_path}/{name}.jsonl", domain: web, id_field: id}}]
stages: [{{op: gopher_quality}}, {{op: minhash_dedup}}, {{op: exact_dedup}}]
output: {{dir: "{tmp_path}/{name}-out"}}
"""
        m = run(parse_recipe(text), recipe_text=text, engine="local")
        assert m["conservation"]["ok"] and m["conservation"]["kept"] == 0
        assert m["conservation"]["read"] == (0 if name == "empty" else 3)
