"""language_id: real translated manual pages identified; languages/min_score remove with reasons; fastText models
from a path (ISO 639-3 labels mapped); through the runner, the columns in shards and the removed rows."""

import json
from pathlib import Path

import pytest

from operators.langid import LanguageID, iso_code
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from tests.conftest import make_batch, write_jsonl

#: one paragraph per language from Debian's translated manual pages (package, version and page in `source`)
PAGES = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data" / "manpages_multilingual.jsonl").read_text("utf-8").splitlines()
]


def _text(lang: str) -> str:
    return next(p["text"] for p in PAGES if p["lang"] == lang)


def test_real_manual_page_paragraphs_are_identified():
    assert len({p["lang"] for p in PAGES}) >= 15
    op = LanguageID(stage="lid")
    out = op(make_batch([p["text"] for p in PAGES]))
    assert out.column("language").to_pylist() == [p["lang"] for p in PAGES]
    assert all(s > 0.5 for s in out.column("language_score").to_pylist())
    assert out.column("reason").to_pylist() == [None] * len(PAGES)  # no languages, no min_score: annotate only
    assert op.drain_metrics() == {"languages": {p["lang"]: 1 for p in PAGES}}


def test_languages_and_min_score_remove_with_their_reasons():
    texts = [_text("de"), _text("en"), _text("fr"), "Guten Tag", "", _text("de")]
    batch = make_batch(texts, domains=["web"] * 5 + ["code"], reasons=[None] * 5 + ["earlier"])
    out = LanguageID(stage="lid", languages=["de", "en"], min_score=0.65, domains=["web"])(batch)
    langs, scores = out.column("language").to_pylist(), out.column("language_score").to_pylist()
    assert langs[:4] == ["de", "en", "fr", "de"] and scores[3] < 0.65  # German, but hesitant
    assert langs[4] is None and scores[4] == 0.0  # nothing to score
    assert langs[5] is None and scores[5] is None  # removed earlier (and another domain): not scored
    assert out.column("reason").to_pylist() == [
        None,
        None,
        "language_not_kept",
        "language_low_score",
        "language_not_kept",
        "earlier",
    ]
    assert out.column("stage").to_pylist() == [None, None, "lid", "lid", "lid", "earlier"]
    assert out.column("text").to_pylist() == texts
    only_score = LanguageID(stage="lid", min_score=0.65)(make_batch(texts[:4]))
    assert only_score.column("reason").to_pylist() == [None, None, None, "language_low_score"]


def test_the_prefix_is_scored_with_newlines_as_spaces():
    de, fr = _text("de"), _text("fr")
    doc = de.replace(". ", ".\n") + "\n\n" + fr * 5  # German first, then far more French
    short = LanguageID(stage="lid", max_chars=len(de))(make_batch([doc]))
    whole = LanguageID(stage="lid", max_chars=None)(make_batch([doc]))
    assert short.column("language").to_pylist() == ["de"]
    assert whole.column("language").to_pylist() == ["fr"]
    assert short.column("text").to_pylist() == [doc]


def test_bad_parameters_fail_at_construction_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"languages \['EN', 'english'\] are not codes"):
        LanguageID(stage="lid", languages=["en", "EN", "english"])
    with pytest.raises(ValueError, match="min_score"):
        LanguageID(stage="lid", min_score=1.5)
    with pytest.raises(ValueError, match="backend"):
        LanguageID(stage="lid", backend="cld3")
    with pytest.raises(ValueError, match=r"hub id is not downloaded.*packaged default, fastText lid\.176\.ftz"):
        LanguageID.validate_params(stage="lid", model="facebook/fasttext-language-identification")
    with pytest.raises(ValueError, match="not a local file"):
        LanguageID(stage="lid", model=str(tmp_path / "lid.176.bin"))


def test_a_fasttext_model_from_a_path_with_glotlid_labels(tmp_path):
    import fasttext

    def train(labels: dict[str, str]) -> None:
        lines = []
        for p in PAGES:
            if p["lang"] in labels:
                words = p["text"].split()
                lines += [f"{labels[p['lang']]} {' '.join(words[i : i + 12])}" for i in range(0, len(words), 6)]
        (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
        ft = fasttext.train_supervised(input=str(tmp_path / "train.txt"), epoch=50, seed=0, thread=1, verbose=0)
        ft.save_model(str(tmp_path / "glot.bin"))

    train({"en": "__label__eng_Latn", "de": "__label__deu_Latn"})
    op = LanguageID(stage="lid", model=str(tmp_path / "glot.bin"), languages=["de"])
    out = op(make_batch([_text("de"), _text("en")]))
    assert out.column("language").to_pylist() == ["de", "en"]
    assert out.column("reason").to_pylist() == [None, "language_not_kept"]
    train({"en": "__label__deu_Latn", "de": "__label__eng_Latn"})  # the file replaced while a worker holds the op
    assert op(make_batch([_text("de")])).column("language").to_pylist() == ["en"]
    with pytest.raises(ValueError, match=r"\['fr'\] are not codes"):
        LanguageID(stage="lid", model=str(tmp_path / "glot.bin"), languages=["fr"])


def test_labels_become_iso_639_1_codes_where_one_exists():
    assert iso_code("__label__de") == "de"
    assert iso_code("__label__eng_Latn") == "en"
    assert iso_code("__label__cmn_Hani") == "zh"  # the standard form of a macrolanguage
    assert iso_code("__label__yue_Hant") == "yue"  # no ISO 639-1 code: the 639-3 code
    assert iso_code("__label__nds") == "nds"  # lid.176's Wikipedia codes as they are


def test_through_the_runner_columns_in_shards_and_removed_rows(tmp_path, ray_session):
    docs = [{"id": f"p{i}", "text": p["text"], "url": f"https://example.org/{p['lang']}"} for i, p in enumerate(PAGES)]
    write_jsonl(tmp_path / "in" / "docs.jsonl", docs)
    text = (
        f"inputs:\n  - {{path: {tmp_path}/in/docs.jsonl, domain: web}}\n"
        f"stages:\n  - {{op: language_id, languages: [en, de, fr]}}\n"
        f"output: {{dir: {tmp_path}/out, shard_mb: 0.002}}\n"
    )
    m = run(parse_recipe(text), recipe_text=text)
    assert m["conservation"]["ok"]
    kept = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    assert sorted(r["language"] for r in kept) == ["de", "en", "fr"]
    assert all(0.5 < r["language_score"] <= 1 and r["url"].endswith(r["language"]) for r in kept)
    removed = read_shards(str(tmp_path / "out" / "removed")).to_pylist()
    assert len(removed) == len(PAGES) - 3 and {r["reason"] for r in removed} == {"language_not_kept"}
    assert {r["language"] for r in removed} == {p["lang"] for p in PAGES} - {"en", "de", "fr"}
    st = next(s for s in m["stages"] if s["op"] == "language_id")
    assert st["removed"] == {"language_not_kept": len(PAGES) - 3}
    assert st["report"]["language_id"]["languages"] == {p["lang"]: 1 for p in PAGES}
