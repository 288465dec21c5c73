"""The `sluice` command line, run as a user would: curate a fixture recipe, then inspect it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import prose, write_jsonl

SLUICE = str(Path(sys.executable).parent / "sluice")


def _sluice(*args, cwd, input=None):
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([SLUICE, *args], cwd=cwd, capture_output=True, text=True, input=input, env=env, timeout=300)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    docs = [{"id": f"d{i}", "text": prose(i % 5)} for i in range(10)]
    write_jsonl(root / "data" / "web.jsonl", [*docs, b"not json"])
    (root / "recipe.yaml").write_text(
        "inputs:\n  - {path: data/web.jsonl, domain: web, id_field: id}\n"
        "stages:\n  - {op: exact_dedup}\noutput: {dir: out/run, shard_mb: 1}\n"
    )
    res = _sluice("curate", "recipe.yaml", cwd=root)
    assert res.returncode == 0, res.stderr
    return root, res


def test_curate_prints_the_funnel_and_an_inspect_command(curated):
    root, res = curated
    assert "Funnel" in res.stdout and "exact_duplicate 5" in res.stdout
    assert "sluice inspect out/run" in res.stdout
    m = json.loads((root / "out/run/manifest.json").read_text())
    assert m["conservation"] == {**m["conservation"], "read": 11, "kept": 5, "removed": 6, "ok": True}


def test_inspect_sql_formats(curated):
    root, _ = curated
    res = _sluice("inspect", "out/run", "SELECT count(*) AS n FROM docs", "--format", "json", cwd=root)
    assert res.returncode == 0 and json.loads(res.stdout) == [{"n": 5}]
    res = _sluice(
        "inspect", "out/run", "SELECT reason, count(*) AS n FROM removed GROUP BY 1 ORDER BY 1", "-f", "csv", cwd=root
    )
    assert res.stdout.splitlines() == ["reason,n", "exact_duplicate,5", "input_bad_json,1"]
    res = _sluice("inspect", "out/run", "SELECT stage, rows_in, rows_out FROM stages", cwd=root)
    assert "exact_dedup" in res.stdout and "(2 rows)" in res.stdout


def test_inspect_error_is_duckdbs_message_not_a_traceback(curated):
    root, _ = curated
    res = _sluice("inspect", "out/run", "SELECT nope FROM docs", cwd=root)
    assert res.returncode == 1
    assert "Binder Error" in res.stderr and "Traceback" not in res.stderr


def test_inspect_prompt_answers_queries_until_quit(curated):
    root, _ = curated
    res = _sluice("inspect", "out/run", cwd=root, input="SELECT count(*) AS n FROM removed;\n.quit\n")
    assert res.returncode == 0 and "6" in res.stdout


def test_bad_recipe_is_one_message_before_any_work(tmp_path):
    (tmp_path / "r.yaml").write_text("inputs:\n  - {path: nothing/*.jsonl, domain: web}\nstages:\n  - {op: dedupe}\n")
    res = _sluice("curate", "r.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert "stages[0].op (line 4): unknown op 'dedupe'" in res.stderr
    assert "inputs[0].path (line 2): no files match" in res.stderr
    assert "Traceback" not in res.stderr
