"""decontaminate: documents (or spans) sharing word 13-grams with eval sets are removed; the manifest counts them."""

import json

import pytest

from operators.decontaminate import Decontaminate
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from tests.conftest import make_batch, prose, write_jsonl

QUESTIONS = [
    {"question": f"In the old {topic} survey, which of the five regions reported the highest rainfall in {year}?",
     "answer": f"The northern region, with {year % 97 + 300} millimetres."}
    for topic, year in zip(["river", "forest", "harbour", "valley", "market", "railway"], range(1901, 1907))
]  # fmt: skip


@pytest.fixture
def evals(tmp_path):
    return str(write_jsonl(tmp_path / "bench.jsonl", QUESTIONS))


def _item(i):
    return f"{QUESTIONS[i]['question']} {QUESTIONS[i]['answer']}"


def test_documents_with_an_eval_item_are_removed_verbatim_or_lightly_edited(evals):
    docs = [
        prose(1) + " " + _item(0) + " " + prose(2),  # verbatim
        prose(3) + " " + _item(1).upper().replace(",", ";") + " " + prose(4),  # case and punctuation edited
        prose(5) + " " + " ".join(_item(2).split()[:14]) + " …",  # a 14-word fragment of the question
        prose(6),
        prose(7) + " the northern region with 305 millimetres",  # shorter than 13 words: no match
    ]
    out = Decontaminate(stage="decon", eval_sets=[evals])(make_batch(docs))
    assert out.column("reason").to_pylist() == ["decontaminated"] * 3 + [None, None]
    assert out.column("text").to_pylist() == docs  # document mode never edits text


def test_spans_mode_cuts_only_the_overlap(evals):
    doc = prose(1) + " " + _item(0) + " Afterwards the survey closed."
    out = Decontaminate(stage="decon", eval_sets=[evals], mode="spans")(make_batch([doc, _item(3)]))
    text = out.column("text").to_pylist()[0]
    assert text.startswith(prose(1)) and text.endswith("Afterwards the survey closed.")
    assert "rainfall" not in text and out.column("reason").to_pylist() == [None, "decontaminated_empty"]


def test_the_manifest_counts_items_found_and_documents_per_eval_set(tmp_path, evals, ray_session):
    docs = [{"id": f"d{i}", "text": prose(i) + (" " + _item(i % 3) if i < 5 else "")} for i in range(12)]
    write_jsonl(tmp_path / "in" / "web.jsonl", docs)
    text = (
        f"inputs:\n  - {{path: {tmp_path}/in/web.jsonl, domain: web, id_field: id}}\n"
        f"stages:\n  - {{op: decontaminate, eval_sets: [{evals}]}}\noutput: {{dir: {tmp_path}/out}}\n"
    )
    m = run(parse_recipe(text), recipe_text=text)
    st = next(s for s in m["stages"] if s["op"] == "decontaminate")
    assert st["removed"] == {"decontaminated": 5}
    got = st["report"]["decontamination"]["sets"][evals]
    assert got["items"] == 6 and got["items_found"] == 3 and got["documents"] == 5
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["conservation"]["ok"]
