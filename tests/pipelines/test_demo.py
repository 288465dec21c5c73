"""The demo recipe end to end on a small demo corpus: its curated code is the same programs as its inputs."""

import ast
from pathlib import Path

import pytest

from pipelines.demo_data import build
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards

pytestmark = pytest.mark.usefixtures("ray_session")

DEMO = Path(__file__).parents[2] / "pipelines" / "recipes" / "demo.yaml"


def test_demo_recipe_keeps_code_the_same_programs(tmp_path):
    build(tmp_path / "demo", max_code=40)
    text = DEMO.read_text().replace("data/demo", str(tmp_path / "demo")).replace("out/demo", str(tmp_path / "out"))
    m = run(parse_recipe(text), recipe_text=text)
    assert m["conservation"]["ok"]
    code = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    code = [d for d in code if d["domain"] == "code"]
    assert len(code) > 20
    compared = 0
    for doc in code:
        original = Path(doc["source"]).read_text(encoding="utf-8")
        try:
            tree = ast.dump(ast.parse(original))
        except SyntaxError:
            continue
        assert ast.dump(ast.parse(doc["text"])) == tree, doc["source"]
        assert doc["text"] == original.replace("\r\n", "\n")  # byte for byte, but for line endings
        compared += 1
    assert compared > 20
