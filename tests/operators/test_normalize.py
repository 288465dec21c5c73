import ast
import sysconfig
from pathlib import Path

import pyarrow as pa
import pytest

from operators.base import params_model
from operators.normalize import Normalize
from tests.conftest import make_batch

#: the whitespace rewrites a recipe can ask for (all off by default)
REWRITE = {"strip_lines": True, "collapse_spaces": True, "collapse_blank_lines": True, "strip": True}


def norm(text, **kw):
    return Normalize(stage="normalize", **{**REWRITE, **kw}).normalize(text)


def test_nfc_composes():
    decomposed = "cafe\u0301 nai\u0308ve"
    assert norm(decomposed) == "café naïve"
    assert norm(decomposed, nfc=False) == decomposed


def test_line_endings():
    assert norm("a\r\nb\rc\u2028d") == "a\nb\nc\nd"
    kept = norm("a\r\nb", normalize_newlines=False, remove_control=False, strip_lines=False, collapse_spaces=False)
    assert kept == "a\r\nb"


def test_control_characters_removed_but_tab_and_newline_kept():
    assert norm("a\x00b\x07c\x1bd\x7fe\x9ff", collapse_spaces=False) == "abcdef"
    assert norm("a\tb\nc", collapse_spaces=False) == "a\tb\nc"
    assert norm("a\x00b", remove_control=False) == "a\x00b"


def test_spaces_collapse_within_lines():
    assert norm("a  b\t\tc \t d\u00a0e") == "a b c d e"
    assert norm("a  b", collapse_spaces=False) == "a  b"
    # single spaces are left alone and newlines are not horizontal whitespace
    assert norm("one two\nthree") == "one two\nthree"


def test_trailing_whitespace_stripped_per_line():
    assert norm("a  \nb\t\n c ") == "a\nb\n c"
    assert norm("a \nb", strip_lines=False) == "a \nb"


def test_blank_lines_collapse_to_one():
    assert norm("a\n\n\n\nb\n\nc\n \n\t\nd") == "a\n\nb\n\nc\n\nd"
    assert norm("a\n\n\n\nb", collapse_blank_lines=False) == "a\n\n\n\nb"


def test_document_stripped():
    assert norm("\n\n  hello world  \n") == "hello world"
    assert norm("  x ", strip=False, strip_lines=False, collapse_spaces=False) == "  x "


def test_idempotent():
    text = " Caf\u0065\u0301 \r\n\r\n\r\n  tab\there \x00 end  "
    once = norm(text)
    assert norm(once) == once


def test_defaults_keep_whitespace_and_change_only_encoding_artifacts():
    text = "def f(x):\r\n\tif x:\r\n        return [1,  2]   # aligned\n\n\n\n  | a  | b |\x00\n"
    assert Normalize(stage="n").normalize(text) == (
        "def f(x):\n\tif x:\n        return [1,  2]   # aligned\n\n\n\n  | a  | b |\n"
    )


def test_requested_whitespace_rewrites_never_touch_code():
    batch = make_batch(["a  b\n\n\n\nc  ", "    x  =  1\n", "    y  =  2\n"], domains=["web", "code", "web"])
    batch = batch.set_column(3, "source", pa.array(["page.html.txt", "a.py", "lib/util.py"]))
    out = Normalize(stage="normalize", **REWRITE)(batch)
    assert out.column("text").to_pylist() == ["a b\n\nc", "    x  =  1\n", "    y  =  2\n"]


def test_normalized_python_is_the_same_program():
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    out = Normalize(stage="normalize")(make_batch(texts, domains=["docs"] * len(texts)))
    for before, after in zip(texts, out.column("text").to_pylist()):
        try:
            tree = ast.dump(ast.parse(before))
        except SyntaxError:
            continue
        assert ast.dump(ast.parse(after)) == tree


def test_empty_result_marks_row_removed_and_keeps_original_text():
    batch = make_batch(["  \x00\r\n\t ", "ok  text"])
    out = Normalize(stage="normalize", **REWRITE)(batch)
    assert out.column("reason").to_pylist() == ["normalize_empty", None]
    assert out.column("stage").to_pylist() == ["normalize", None]
    assert out.column("text").to_pylist() == ["  \x00\r\n\t ", "ok text"]
    assert out.schema == batch.schema


def test_only_active_rows_rewritten():
    batch = make_batch(
        ["a  b", "c  d", "e  f", ""],
        domains=["web", "code", "web", "code"],
        reasons=[None, None, "earlier_reason", None],
    )
    out = Normalize(stage="normalize", domains=["web"], **REWRITE)(batch)
    assert out.column("text").to_pylist() == ["a b", "c  d", "e  f", ""]
    assert out.column("reason").to_pylist() == [None, None, "earlier_reason", None]
    assert out.num_rows == batch.num_rows


def test_unchanged_batch_passes_through():
    batch = make_batch(["already clean", "also clean\n\nyes"])
    out = Normalize(stage="normalize")(batch)
    assert out.equals(batch)


def test_parameter_validation():
    with pytest.raises(ValueError, match=r"nfc: Input should be a valid boolean"):
        Normalize(stage="n", nfc="yes")


def test_params_model_defaults_build_the_operator():
    params = params_model(Normalize).model_validate({}).model_dump()
    assert params["nfc"] is True and params["domains"] is None
    Normalize(stage="normalize", **params)
