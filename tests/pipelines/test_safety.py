"""Data safety, reproduced as a careful user and as an attacker would: each test is a finding of the
data-safety issue that failed (deleted, skipped or reused data, or crashed) before the fix."""

import gzip
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.demo_data import build
from pipelines.recipe import RecipeError, parse_recipe
from pipelines.report import write_report
from pipelines.runner import InputError, run
from pipelines.select import select
from storage.run import MARKER, UnsafePathError
from storage.shards import read_shards
from tests.conftest import prose, write_jsonl

pytestmark = pytest.mark.usefixtures("ray_session")


def _recipe(inputs: str, out, stages: str = "  - {op: exact_dedup}"):
    return parse_recipe(f'inputs:\n{inputs}\nstages:\n{stages}\noutput: {{dir: "{out}", shard_mb: 1}}\n')


def _web(root, n=6, name="web.jsonl", prefix="d"):
    return write_jsonl(root / name, [{"id": f"{prefix}{i}", "text": prose(i)} for i in range(n)])


def _ids(out):
    return sorted(read_shards(f"{out}/shards").column("id").to_pylist())


# ---------------------------------------------------------------- 1, 2: deleting what Sluice did not write
def test_fresh_refuses_a_directory_holding_the_inputs_or_user_files_and_deletes_nothing(tmp_path):
    _web(tmp_path / "proj" / "data")
    inputs = f'  - {{path: "{tmp_path}/proj/data/web.jsonl", domain: web, id_field: id}}'
    with pytest.raises(UnsafePathError, match="overlaps an input"):
        run(_recipe(inputs, tmp_path / "proj"), fresh=True)
    assert (tmp_path / "proj" / "data" / "web.jsonl").stat().st_size > 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UnsafePathError, match=r"holds files Sluice did not write \(notes.txt\)"):
        run(_recipe(inputs, tmp_path / "mine"), fresh=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    (tmp_path / "r.yaml").write_text(f"inputs:\n{inputs}\noutput: {{dir: {tmp_path}/mine}}\n")
    res = CliRunner().invoke(app, ["curate", str(tmp_path / "r.yaml"), "--fresh"])
    assert res.exit_code == 2 and "refused" in res.output and "notes.txt" in res.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_fresh_on_a_run_deletes_only_sluices_files_and_reruns(tmp_path):
    _web(tmp_path / "data")
    inputs = f'  - {{path: "{tmp_path}/data/web.jsonl", domain: web, id_field: id}}'
    run(_recipe(inputs, tmp_path / "out"))
    assert (tmp_path / "out" / MARKER).exists()
    m = run(_recipe(inputs, tmp_path / "out"), fresh=True)
    assert m["conservation"]["ok"] and not any(s["reused"] for s in m["segments"])


def test_stage_names_that_escape_the_run_are_refused(tmp_path):
    _web(tmp_path / "data")
    inputs = f'  - {{path: "{tmp_path}/data/web.jsonl", domain: web}}'
    for name in ("x/../../../../victim", "..", "a\n"):
        with pytest.raises(RecipeError, match=r"stage name .* is not allowed"):
            _recipe(inputs, tmp_path / "out", f"  - {{op: exact_dedup, name: {json.dumps(name)}}}")


# ---------------------------------------------------------------- 3, 7: select and its SQL
@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("safe")
    _web(root / "data", 8)
    run(_recipe(f'  - {{path: "{root}/data/web.jsonl", domain: web, id_field: id}}', root / "src"))
    return root


def test_select_refuses_the_source_spelled_differently(finished, monkeypatch):
    monkeypatch.chdir(finished)
    before = sorted(p.name for p in (finished / "src" / "shards" / "domain=web").iterdir())
    for dest in ("./src", "src/", f"{finished}/src/../src", "src/sub", str(finished)):
        with pytest.raises(UnsafePathError, match="source run"):
            select("src", dest=dest, overwrite=True)
    os.symlink(finished / "src", finished / "alias")
    with pytest.raises(UnsafePathError):
        select("src", dest="alias", overwrite=True)
    assert sorted(p.name for p in (finished / "src" / "shards" / "domain=web").iterdir()) == before
    res = CliRunner().invoke(app, ["select", "src", "-o", "./src", "--overwrite"])
    assert res.exit_code == 2 and "source run" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "where",
    [
        "TRUE) FROM docs; COPY (SELECT 1) TO '{out}/pwned.csv'; SELECT (1",
        "id IN (SELECT column0 FROM read_csv('/etc/passwd'))",
        "length(text) > 0 -- comment",
        "(SELECT count(*) FROM glob('/etc/*')) > 0",
    ],
)
def test_select_where_only_reads_the_run(finished, tmp_path, where):
    with pytest.raises(ValueError, match=r"SQL expression|DuckDB rejected|Permission"):
        select(str(finished / "src"), where=where.format(out=tmp_path), dest=str(tmp_path / "sel"))
    assert not (tmp_path / "pwned.csv").exists()


def test_select_order_by_cannot_start_a_statement(finished, tmp_path):
    with pytest.raises(ValueError, match="SQL expression"):
        select(str(finished / "src"), order_by="id; COPY (SELECT 1) TO 'x.csv'", dest=str(tmp_path / "sel"))
    m = select(str(finished / "src"), where="length(text) > 0", order_by="length(text) DESC", dest=str(tmp_path / "s"))
    assert m["conservation"]["ok"]


def test_demo_data_replaces_only_a_corpus_it_wrote(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "mine.py").write_text("print('mine')")
    with pytest.raises(FileExistsError, match="was not written by `sluice demo-data`"):
        build(tmp_path, max_code=1)
    assert (tmp_path / "code" / "mine.py").exists()


def test_report_and_inspect_refuse_clearly(finished, tmp_path):
    (tmp_path / "cv.html").write_text("<html>my cv</html>")
    res = CliRunner().invoke(app, ["report", str(finished / "src"), "-o", str(tmp_path / "cv.html")])
    assert res.exit_code == 2 and "not a Sluice report" in res.output
    assert (tmp_path / "cv.html").read_text() == "<html>my cv</html>"
    res = CliRunner().invoke(app, ["report", str(finished / "src"), "-o", str(finished / "src" / "manifest.json")])
    assert res.exit_code == 2 and json.loads((finished / "src" / "manifest.json").read_text())["conservation"]["ok"]
    res = CliRunner().invoke(app, ["inspect", str(finished / "src" / "manifest.json"), "SELECT 1"])
    assert res.exit_code == 1 and "is not a run directory" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- 4: resume must not reuse stale work
def test_resume_reruns_when_an_input_changes_and_says_which(tmp_path, caplog):
    _web(tmp_path / "data", 4)
    r = _recipe(f'  - {{path: "{tmp_path}/data/web.jsonl", domain: web, id_field: id}}', tmp_path / "out")
    run(r)
    assert _ids(tmp_path / "out") == ["d0", "d1", "d2", "d3"]
    with open(tmp_path / "data" / "web.jsonl", "a") as f:  # append a record
        f.write(json.dumps({"id": "d9", "text": prose(9)}) + "\n")
    caplog.set_level("WARNING", logger="pipelines.runner")
    m = run(r)
    assert _ids(tmp_path / "out") == ["d0", "d1", "d2", "d3", "d9"]
    assert not any(s["reused"] for s in m["segments"])
    assert "changed input file(s): " + str(tmp_path / "data" / "web.jsonl") in caplog.text
    m = run(r)
    assert all(s["reused"] for s in m["segments"])


def test_a_checkpoint_written_into_by_someone_else_is_rebuilt(tmp_path, caplog):
    _web(tmp_path / "data", 6)
    r = _recipe(f'  - {{path: "{tmp_path}/data/web.jsonl", domain: web, id_field: id}}', tmp_path / "out")
    m1 = run(r)
    live = next((tmp_path / "out" / "_stages").glob("00-*/live"))
    extra = live / "part-00099.parquet"  # what a second, concurrent run left behind
    extra.write_bytes(next(live.glob("part-*.parquet")).read_bytes())
    caplog.set_level("WARNING", logger="pipelines.runner")
    m2 = run(r)
    assert "checkpoint not trusted" in caplog.text
    assert m2["conservation"]["ok"] and m2["conservation"]["kept"] == m1["conservation"]["kept"]
    assert not extra.exists()


def test_a_second_run_into_the_same_directory_is_refused_with_the_holder(tmp_path):
    _web(tmp_path / "data", 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sluice-lock").write_text(
        json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "since": time.time(), "command": "sluice curate"})
    )
    (out / MARKER).write_text("{}")
    (tmp_path / "r.yaml").write_text(
        f'inputs:\n  - {{path: "{tmp_path}/data/web.jsonl", domain: web}}\noutput: {{dir: "{out}"}}\n'
    )
    res = CliRunner().invoke(app, ["curate", str(tmp_path / "r.yaml")])
    assert res.exit_code == 2 and f"pid {os.getpid()}" in res.output and "is in use by sluice curate" in res.output


# ---------------------------------------------------------------- 5: every record counted
def test_underscore_and_dot_files_are_read_and_vcs_and_excluded_files_are_counted(tmp_path):
    src = tmp_path / "code"
    (src / ".git").mkdir(parents=True)
    (src / ".git" / "config").write_text("[core]")
    for name in ("__future__.py", "_py_abc.py", ".pylintrc", "mod.py", "mod.pyc"):
        (src / name).write_text(f"# {name}\n" + prose(len(name)))
    out = tmp_path / "out"
    r = _recipe(f'  - {{path: "{src}", format: text, domain: code, exclude: ["*.pyc"]}}', out, "  []")
    m = run(r)
    kept = sorted(os.path.basename(s) for s in read_shards(f"{out}/shards").column("source").to_pylist())
    assert kept == [".pylintrc", "__future__.py", "_py_abc.py", "mod.py"]
    gone = read_shards(f"{out}/removed").to_pylist()
    assert sorted((os.path.basename(g["source"]), g["reason"]) for g in gone) == [
        (".git", "input_excluded"),
        ("mod.pyc", "input_excluded"),
    ]
    assert m["conservation"] == {**m["conservation"], "read": 6, "kept": 4, "removed": 2, "ok": True}


def test_a_truncated_gzip_fails_the_run_unless_the_input_continues(tmp_path):
    body = b"".join(json.dumps({"text": prose(i % 7) + f" {i}"}).encode() + b"\n" for i in range(2000))
    data = gzip.compress(body)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    path = f"{tmp_path}/data/cut.jsonl.gz"
    with pytest.raises(InputError, match=r"1 input file\(s\) could not be read completely .*read stopped after \d+"):
        run(_recipe(f'  - {{path: "{path}", domain: web}}', tmp_path / "out", "  []"))
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (err,) = m["input_errors"]
    assert err["reason"] == "input_truncated" and err["records_read"] == m["conservation"]["kept"] > 0
    assert "the rest of the file is lost" in err["error"]
    assert "Input files not read completely (1)" in Path(write_report(str(tmp_path / "out"))).read_text()
    m = run(_recipe(f'  - {{path: "{path}", domain: web, on_input_error: continue}}', tmp_path / "out2", "  []"))
    assert m["input_errors"][0]["records_read"] == err["records_read"]


# ---------------------------------------------------------------- 6: duplicate ids
def test_duplicate_ids_across_inputs_are_an_error_naming_both_sources(tmp_path):
    a = _web(tmp_path / "data", 3, "a.jsonl")
    b = _web(tmp_path / "data", 2, "b.jsonl")  # ids d0, d1 again, same texts
    inputs = f'  - {{path: "{a}", domain: web, id_field: id}}\n  - {{path: "{b}", domain: web, id_field: id}}'
    with pytest.raises(InputError, match=rf"2 id\(s\) are used by more than one record: id 'd0' is in {a} and in {b}"):
        run(_recipe(inputs, tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_duplicate_ids_removed_on_request_keep_the_first_file_and_conserve(tmp_path):
    a = write_jsonl(tmp_path / "data" / "a.jsonl", [{"id": f"d{i}", "text": prose(i)} for i in range(3)])
    b = write_jsonl(
        tmp_path / "data" / "b.jsonl",
        [{"id": "d0", "text": prose(50)}, {"id": "x", "text": prose(51)}, {"id": "x", "text": prose(52)}],
    )
    inputs = (
        f'  - {{path: "{a}", domain: web, id_field: id, on_duplicate_id: remove}}\n'
        f'  - {{path: "{b}", domain: web, id_field: id, on_duplicate_id: remove}}'
    )
    m = run(_recipe(inputs, tmp_path / "out"))
    kept = {r["id"]: r["text"] for r in read_shards(f"{tmp_path}/out/shards").to_pylist()}
    assert kept == {"d0": prose(0), "d1": prose(1), "d2": prose(2), "x": prose(51)}
    gone = sorted((g["id"], g["reason"], g["text"]) for g in read_shards(f"{tmp_path}/out/removed").to_pylist())
    assert gone == [("d0", "input_duplicate_id", prose(50)), ("x", "input_duplicate_id", prose(52))]
    assert m["conservation"] == {**m["conservation"], "read": 6, "kept": 4, "removed": 2, "ok": True}


# ---------------------------------------------------------------- 8: bounded work on hostile input
def test_yaml_alias_bomb_and_bad_domains_fail_fast(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")
    )
    with pytest.raises(RecipeError, match=r"expands to [0-9,]+ values"):  # 10^9 values: it hung before
        parse_recipe(bomb + "inputs: []\n")
    _web(tmp_path / "data")
    for domain in ('"web\\n"', '"../web"', '"a/b"'):
        with pytest.raises(RecipeError, match=r"domain .* is not allowed"):
            parse_recipe(f'inputs:\n  - {{path: "{tmp_path}/data/web.jsonl", domain: {domain}}}\n')


def test_a_symlink_loop_in_a_text_directory_is_walked_once(tmp_path):
    src = tmp_path / "docs"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text(prose(1))
    os.symlink(src, src / "sub" / "back")
    m = run(_recipe(f'  - {{path: "{src}", format: text, domain: docs}}', tmp_path / "out", "  []"))
    assert m["conservation"] == {**m["conservation"], "read": 1, "kept": 1, "ok": True}
