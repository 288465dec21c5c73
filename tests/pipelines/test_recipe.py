"""Recipe validation: one clear message naming the field and the YAML line, before any work."""

import pytest

from pipelines.recipe import RecipeError, parse_recipe


def _recipe(tmp_path, stages: str, path: str | None = None) -> str:
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "hello"}\n')
    return f"""inputs:
  - {{path: "{path or f}", domain: web}}
stages:
{stages}
output: {{dir: {tmp_path}/out}}
"""


def test_valid_recipe_parses_with_defaults(tmp_path):
    r = parse_recipe(_recipe(tmp_path, "  - {op: exact_dedup}\n  - {op: inject_fault, mode: raise}"))
    assert [s.op for s in r.stages] == ["exact_dedup", "inject_fault"]
    assert r.output.shard_mb == 256
    assert r.fingerprint(1) != r.fingerprint(2)


def test_unknown_op_names_the_field_line_and_known_ops(tmp_path):
    with pytest.raises(RecipeError) as e:
        parse_recipe(_recipe(tmp_path, "  - {op: exact_dedup}\n  - {op: minhash_dedupe}"))
    msg = str(e.value)
    assert "stages[1].op (line 5)" in msg
    assert "unknown op 'minhash_dedupe'" in msg and "exact_dedup" in msg


def test_bad_parameter_type_and_unknown_parameter(tmp_path):
    with pytest.raises(RecipeError) as e:
        parse_recipe(_recipe(tmp_path, "  - {op: inject_fault, mode: explode}\n  - {op: exact_dedup, thresh: 3}"))
    msg = str(e.value)
    assert "stages[0].mode (line 4)" in msg
    assert "stages[1].thresh (line 5): unknown parameter" in msg


def test_missing_input_path(tmp_path):
    with pytest.raises(RecipeError, match=r"inputs\[0\]\.path \(line 2\): no files match"):
        parse_recipe(_recipe(tmp_path, "  - {op: exact_dedup}", path=str(tmp_path / "nope/*.jsonl")))


def test_bad_domain(tmp_path):
    text = _recipe(tmp_path, "  - {op: exact_dedup}").replace("domain: web", "domain: 'a/b'")
    with pytest.raises(RecipeError, match=r"inputs\[0\]\.domain \(line 2\).*names a directory"):
        parse_recipe(text)


def test_duplicate_stage_names_need_a_name(tmp_path):
    with pytest.raises(RecipeError, match=r"stages\[1\]\.op \(line 5\): stage name 'exact_dedup' used twice"):
        parse_recipe(_recipe(tmp_path, "  - {op: exact_dedup}\n  - {op: exact_dedup}"))
    parse_recipe(_recipe(tmp_path, "  - {op: exact_dedup}\n  - {op: exact_dedup, name: dedup_again}"))


def test_not_yaml_is_one_clear_message():
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe("inputs: [unclosed")


@pytest.mark.parametrize("name", ["demo.yaml", "code.yaml"])
def test_shipped_recipes_validate(name):
    """The shipped recipes parse; code.yaml's filters are calibrated on code (looser than the web defaults)."""
    from pathlib import Path

    r = parse_recipe((Path(__file__).parents[2] / "pipelines" / "recipes" / name).read_text(), check_inputs=False)
    if name == "code.yaml":
        assert r.calibration and r.calibration["keep"] == 0.99
        gq = next(s for s in r.stages if s.op == "gopher_quality")
        assert gq.params["min_alpha_words_ratio"] is None and gq.params["domains"] == ["code"]
