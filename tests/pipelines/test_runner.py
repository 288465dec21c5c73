"""The runner on Ray Data: whole-dataset dedup, conservation, quarantine, resume, inspection."""

import json

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from storage.views import connect
from tests.conftest import prose, write_jsonl

pytestmark = pytest.mark.usefixtures("ray_session")


def _corpus(root):
    """Three files; documents repeat across files (so across read tasks and blocks)."""
    a = [{"id": f"a{i}", "text": prose(i)} for i in range(12)]
    b = [{"id": f"b{i}", "text": prose(i).upper() if i < 4 else prose(100 + i)} for i in range(10)]
    c = [{"id": f"0c{i}", "text": "  " + prose(i + 2).replace(" ", "   ")} for i in range(3)]
    write_jsonl(root / "in" / "a.jsonl", [*a, b"{broken", {"id": "e", "text": ""}])
    write_jsonl(root / "in" / "b.jsonl", b)
    write_jsonl(root / "in" / "c.jsonl", c)
    return a, b, c


def _recipe(root, stages: str, out="out", shard_mb=0.002):
    return parse_recipe(
        f"""inputs:
  - {{path: "{root}/in/*.jsonl", domain: web, id_field: id}}
stages:
{stages}
output: {{dir: "{root}/{out}", shard_mb: {shard_mb}}}
"""
    )


def _shard_digests(out):
    m = json.loads((out / "manifest.json").read_text())
    return [(s["path"], s["sha256"]) for s in m["shards"]], [(s["path"], s["sha256"]) for s in m["removed_files"]]


def test_exact_dedup_across_files_keeps_lowest_id_and_conserves(tmp_path):
    _corpus(tmp_path)
    m = run(_recipe(tmp_path, "  - {op: exact_dedup}"))
    kept = read_shards(str(tmp_path / "out" / "shards"))
    ids = set(kept.column("id").to_pylist())
    # a0..a3 == b0..b3 (case), a2..a4 == 0c0..0c2 (whitespace): survivor is the lowest id
    assert {"0c0", "0c1", "0c2"} <= ids
    assert not {"a2", "a3", "a4", "b2", "b3"} & ids
    assert {"a0", "a1"} <= ids and not {"b0", "b1"} & ids
    removed = read_shards(str(tmp_path / "out" / "removed"))
    dups = {r["id"]: r["dup_of"] for r in removed.to_pylist() if r["reason"] == "exact_duplicate"}
    assert dups == {"b0": "a0", "b1": "a1", "a2": "0c0", "b2": "0c0", "a3": "0c1", "b3": "0c1", "a4": "0c2"}
    c = m["conservation"]
    assert c["ok"] and c["read"] == 27 and c["kept"] == len(ids) and c["kept"] + c["removed"] == 27
    inputs = {r["reason"]: r["raw"] for r in removed.to_pylist() if r["stage"] == "input"}
    assert inputs == {"input_bad_json": b"{broken", "input_empty_text": b'{"id": "e", "text": ""}'}
    assert m["stages"][1]["report"]["duplicates_removed"] == 7
    assert len(m["shards"]) > 1  # tiny shard_mb forces several shards


def test_inspect_views_agree_with_manifest(tmp_path):
    _corpus(tmp_path)
    m = run(_recipe(tmp_path, "  - {op: exact_dedup}"))
    con = connect(str(tmp_path / "out"))
    assert con.execute("SELECT count(*) FROM docs").fetchone()[0] == m["conservation"]["kept"]
    assert con.execute("SELECT sum(rows) FROM shards").fetchone()[0] == m["conservation"]["kept"]
    by = dict(con.execute("SELECT reason, count(*) FROM removed GROUP BY reason").fetchall())
    from_manifest = {r: n for s in m["stages"] for r, n in s["removed"].items()}
    assert by == from_manifest
    rows = con.execute("SELECT stage, rows_in, rows_out FROM stages ORDER BY rows_in DESC").fetchall()
    assert rows[0][1] == m["conservation"]["read"] and rows[-1][2] == m["conservation"]["kept"]
    assert con.execute("SELECT DISTINCT domain FROM docs").fetchall() == [("web",)]


def test_operator_error_quarantines_the_batch_and_the_run_goes_on(tmp_path):
    _corpus(tmp_path)
    m = run(_recipe(tmp_path, "  - {op: inject_fault, match: 'Story 7 part'}\n  - {op: exact_dedup}"))
    removed = read_shards(str(tmp_path / "out" / "removed")).to_pylist()
    errs = [r for r in removed if r["reason"] == "operator_error"]
    assert errs and all("injected fault" in r["error"] for r in errs)
    assert "a7" in {r["id"] for r in errs}
    assert m["conservation"]["ok"]
    assert m["stages"][1]["stage"] == "inject_fault" and m["stages"][1]["removed"] == {"operator_error": len(errs)}


def test_on_error_fail_stops_the_run(tmp_path):
    _corpus(tmp_path)
    with pytest.raises(Exception, match="injected fault"):
        run(_recipe(tmp_path, "  - {op: inject_fault, on_error: fail}"))
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "shards").exists()


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    _corpus(tmp_path)
    flag = tmp_path / "crash-now"
    stages = f"  - {{op: exact_dedup}}\n  - {{op: inject_fault, when_file: '{flag}', on_error: fail}}"
    clean = run(_recipe(tmp_path, stages, out="clean"))

    flag.write_text("1")
    with pytest.raises(Exception, match="injected fault"):
        run(_recipe(tmp_path, stages, out="crashed"))
    assert not (tmp_path / "crashed" / "manifest.json").exists()
    done = sorted((tmp_path / "crashed" / "_stages").glob("*/_SUCCESS"))
    assert [p.parent.name for p in done] == ["00-read"]
    before = done[0].stat().st_mtime_ns
    flag.unlink()
    resumed = run(_recipe(tmp_path, stages, out="crashed"))
    assert done[0].stat().st_mtime_ns == before  # the read segment was not redone
    assert _shard_digests(tmp_path / "crashed") == _shard_digests(tmp_path / "clean")
    assert resumed["conservation"] == clean["conservation"]

    again = run(_recipe(tmp_path, stages, out="crashed"), fresh=True)
    assert _shard_digests(tmp_path / "crashed") == _shard_digests(tmp_path / "clean")
    assert again["conservation"]["ok"]


def test_growing_a_recipe_reuses_checkpoints_and_stays_correct(tmp_path):
    _corpus(tmp_path)
    first = run(_recipe(tmp_path, "  - {op: exact_dedup}"))
    # the exact_dedup segment was last (it wrote the final shards); now another segment follows it
    grown = run(_recipe(tmp_path, "  - {op: exact_dedup}\n  - {op: exact_dedup, name: again}"))
    assert grown["conservation"]["ok"]
    assert grown["conservation"]["kept"] == first["conservation"]["kept"]
    shrunk = run(_recipe(tmp_path, "  - {op: exact_dedup}"))
    assert shrunk["conservation"] == first["conservation"]


junk_line = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda s: json.dumps({"text": s}).encode(), st.text(max_size=200)),
    st.builds(lambda n: json.dumps({"text": "word " * n}).encode(), st.integers(0, 40_000)),
    st.just(b'{"text": null}'),
    st.just(b'{"text": ""}'),
)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(junk_line, min_size=1, max_size=60))
def test_conservation_under_junk_input(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("junk")
    lines = [ln.replace(b"\n", b" ") for ln in lines]
    write_jsonl(root / "in" / "j.jsonl", lines)
    m = run(_recipe(root, "  - {op: exact_dedup}"))
    c = m["conservation"]
    assert c["ok"] and c["read"] == sum(1 for ln in lines if ln.strip())
    files = list((root / "out").rglob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files if "_stages" not in str(f)) == c["read"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(junk_line, min_size=0, max_size=60))
def test_conservation_under_junk_input_in_process(tmp_path_factory, lines):
    """The same property without Ray (an in-process run costs a fraction of a second: more examples)."""
    root = tmp_path_factory.mktemp("junk-local")
    write_jsonl(root / "in" / "j.jsonl", [ln.replace(b"\n", b" ") for ln in lines])
    m = run(_recipe(root, "  - {op: exact_dedup}\n  - {op: minhash_dedup}"), engine="local")
    c = m["conservation"]
    assert c["ok"] and c["read"] == sum(1 for ln in lines if ln.replace(b"\n", b" ").strip())
    files = list((root / "out").rglob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files if "_stages" not in str(f)) == c["read"]


def test_runs_in_one_session_share_a_statistics_actor_but_never_after_a_failure(tmp_path):
    """An actor costs a worker process: a finished run leaves it to the next, which resets it; a failed run's
    actor is ended (a task of it may still report)."""
    from pipelines import stats

    _corpus(tmp_path / "one")
    _corpus(tmp_path / "two")
    first = run(_recipe(tmp_path / "one", "  - {op: exact_dedup}"))
    (_, left), *_ = stats._IDLE
    second = run(_recipe(tmp_path / "two", "  - {op: exact_dedup}"))
    assert stats._IDLE[0][1] == left  # the same actor served the second run, counting only its own files
    assert second["conservation"] == first["conservation"] and second["conservation"]["ok"]
    (record,) = (tmp_path / "two" / "out" / "_stages").glob("00-*/_SUCCESS")
    assert sorted(json.loads(record.read_text())["read"]) == sorted(str(f) for f in (tmp_path / "two" / "in").glob("*"))
    with pytest.raises(Exception, match="injected fault"):
        run(_recipe(tmp_path / "one", "  - {op: inject_fault, on_error: fail}", out="c"))
    assert stats._IDLE == []
