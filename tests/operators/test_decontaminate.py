"""decontaminate: documents (or spans) sharing word 13-grams with eval sets are removed; the manifest counts them."""

import json
import random

import numpy as np
import pytest

from operators.decontaminate import BloomFilter, Decontaminate, _key
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


@pytest.mark.parametrize("index", ["exact", "bloom"])
def test_the_manifest_counts_items_found_and_documents_per_eval_set(tmp_path, evals, ray_session, index):
    docs = [{"id": f"d{i}", "text": prose(i) + (" " + _item(i % 3) if i < 5 else "")} for i in range(12)]
    write_jsonl(tmp_path / "in" / "web.jsonl", docs)
    unused = str(write_jsonl(tmp_path / "unused.jsonl", [{"text": " ".join(WORDS[:40])}]))
    text = (
        f"inputs:\n  - {{path: {tmp_path}/in/web.jsonl, domain: web, id_field: id}}\n"
        f"stages:\n  - {{op: decontaminate, eval_sets: [{evals}, {unused}], index: {index}}}\n"
        f"output: {{dir: {tmp_path}/out}}\n"
    )
    m = run(parse_recipe(text), recipe_text=text)
    st = next(s for s in m["stages"] if s["op"] == "decontaminate")
    assert st["removed"] == {"decontaminated": 5}
    sets = st["report"]["decontamination"]["sets"]
    got = sets[evals]
    assert got["items"] == 6 and got["documents"] == 5 and got["index"]["kind"] == index
    assert sets[unused]["documents"] == 0  # a set that matched nothing is listed too
    if index == "exact":
        assert got["items_found"] == 3
    else:  # which set, yes; which example, no; and the bound on false matches
        assert got["items_found"] is None and got["index"]["false_positive_rate"] == 1e-9
        assert got["lookups"] > 0 and got["false_documents_expected_max"] < 1e-3
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["conservation"]["ok"]


#: words that never occur in the test documents or QUESTIONS
WORDS = [f"zq{i}x" for i in range(2000)]


def _edited(text, rng):
    """A light edit: lower-cased, punctuation dropped, the middle word replaced."""
    ws = "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()
    ws[len(ws) // 2] = rng.choice(["alpha", "beta", "gamma"])
    return " ".join(ws)


SHORT = ["the harbour survey counted eleven boats before the storm came", "nine of the valley farms sold their rye"]


@pytest.mark.parametrize("mode", ["document", "spans"])
def test_a_bloom_filter_finds_what_the_exact_index_finds(tmp_path, evals, mode):
    short = str(write_jsonl(tmp_path / "short.jsonl", [{"text": t} for t in SHORT]))
    rng = random.Random(0)
    planted = [_item(i) for i in range(6)] + [_edited(_item(i), rng) for i in range(6)]
    planted += (
        [" ".join(_item(i).split()[:14]) for i in range(6)] + SHORT + [SHORT[0].upper().replace(" before", ", before")]
    )
    docs = [prose(k) + " " + t + " " + prose(k + 1) for k, t in enumerate(planted)]
    docs += [prose(k) for k in range(100, 110)] + [" ".join(rng.choice(WORDS) for _ in range(300))]
    out = {}
    for index in ("exact", "bloom"):
        op = Decontaminate(stage="decon", eval_sets=[evals, short], mode=mode, index=index)
        batch = op(make_batch(docs))
        out[index] = batch.column("reason").to_pylist(), batch.column("text").to_pylist(), op.drain_metrics()
    (reasons, texts, exact), (b_reasons, b_texts, bloom) = out["exact"], out["bloom"]
    assert (b_reasons, b_texts) == (reasons, texts)
    n = len(planted)
    if mode == "document":
        assert reasons == ["decontaminated"] * n + [None] * 11
    else:  # the planted text is cut, the prose around it stays
        assert reasons == [None] * len(docs) and all("rainfall" not in t and "rye" not in t for t in texts[:n])
        assert texts[n:] == docs[n:] and texts[0].startswith(prose(0)) and texts[0].endswith(prose(1))
    # the same documents per eval set: a Bloom filter per set still says which set matched
    for name in (evals, short):
        assert bloom["sets"][name]["documents"] == exact["sets"][name]["documents"] > 0
        assert "items_hit" not in bloom["sets"][name] and bloom["sets"][name]["ngram_hits"] > 0


def test_the_manifest_entry_of_a_bloom_filter_bounds_its_false_matches(evals):
    params = {"eval_sets": [evals], "index": "bloom", "false_positive_rate": 1e-4}
    op = Decontaminate(stage="decon", **params)
    op(make_batch([prose(1) + " " + _item(0), prose(2)]))
    got = Decontaminate.finish_metrics(op.drain_metrics(), params)["sets"][evals]
    ((f, sizes),) = op.filters
    ngrams = 6 * (22 - 10 + 1)  # six 22-word items, matched by 10-grams
    assert got["index"] == {"kind": "bloom", "false_positive_rate": 1e-4, "ngrams": ngrams, "bits": f.m, "probes": f.k}
    assert sizes == {10} and f.k == 13 and got["documents"] == 1 and got["items_found"] is None
    assert got["false_documents_expected_max"] == pytest.approx(got["lookups"] * 1e-4, rel=1e-2)


def test_the_measured_false_positive_rate_is_the_configured_one(tmp_path):
    rng = random.Random(1)
    examples = [{"text": " ".join(rng.choice(WORDS[:1000]) for _ in range(40))} for _ in range(1000)]
    path = str(write_jsonl(tmp_path / "big.jsonl", examples))
    rate = 0.01
    op = Decontaminate(stage="decon", eval_sets=[path], index="bloom", false_positive_rate=rate)
    # clean documents: words from the other half of WORDS, so every n-gram hit is a false one
    docs = [" ".join(rng.choice(WORDS[1000:]) for _ in range(212)) for _ in range(200)]  # 200 13-grams each
    out = op(make_batch(docs))
    got = op.drain_metrics()["sets"][path]
    assert got["lookups"] == 40_000
    assert rate / 2 < got["ngram_hits"] / got["lookups"] < 2 * rate
    assert got["documents"] == sum(r == "decontaminated" for r in out.column("reason").to_pylist())
    # and directly on the filter, with many more random n-grams
    clean = [_key([rng.choice(WORDS[1000:]) for _ in range(13)]) for _ in range(200_000)]
    measured = op.filters[0][0].contains(np.array(clean, dtype=np.int64).view(np.uint64)).mean()
    assert rate / 2 < measured < 2 * rate


def test_a_bloom_filter_has_no_false_negatives_and_keeps_its_rate_when_small():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**64, 200, dtype=np.uint64)
    f = BloomFilter(200, 1e-6)
    f.add(keys)
    assert f.contains(keys).all()
    # probes reduced mod m only at the end: with positions kept mod m, two keys would share every
    # probe with probability 1/m², and 200 keys in 5,751 bits would give 6e-6, six times the rate
    hits = sum(int(f.contains(rng.integers(0, 2**64, 1_000_000, dtype=np.uint64)).sum()) for _ in range(5))
    assert hits < 15  # 5 expected at 1e-6


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"index": "bloom", "false_positive_rate": 0}, "false_positive_rate: Input should be greater than 0"),
        ({"index": "bloom", "false_positive_rate": 1.0}, "false_positive_rate: Input should be less than 1"),
        ({"index": "bloom", "false_positive_rate": True}, "false_positive_rate: .*not true/false"),
        ({"index": "hashed"}, "index: Input should be 'exact' or 'bloom'"),
        ({"false_positive_rate": 0.01}, "false_positive_rate .* applies to index: bloom only"),
    ],
)
def test_bad_index_parameters_are_named(evals, params, named):
    with pytest.raises(ValueError, match=named):
        Decontaminate(stage="decon", eval_sets=[evals], **params)
