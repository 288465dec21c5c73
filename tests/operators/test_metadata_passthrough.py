"""Input metadata passes every operator untouched (values and Arrow types); rephrased rows carry their parent's."""

from datetime import datetime

import pyarrow as pa
import pytest

from operators import load_all
from operators.base import REGISTRY
from operators.classifier import CC, HQ, train_fasttext
from operators.dedup.exact import normalized_key
from operators.percentile import ALL
from tests.conftest import make_batch, prose, write_jsonl
from tests.operators.rephrase.servers import FakeOpenAI
from tests.operators.test_classifier import topic_doc

ITEM = "In the old river survey which of the five regions reported the highest rainfall in the year 1901 and why"
TEXTS = [
    prose(1) + " Write to jane.doe@example.com or call from 8.8.8.8 for details.",
    prose(2),
    "Short.",
    prose(2),  # an exact duplicate of d1
    prose(4) + " " + ITEM + " " + prose(5),  # holds an eval item
]
META = pa.table(
    {
        "url": [f"https://example.org/{i}" for i in range(5)],
        "meta": pa.array([{"lang": "en", "score": i, "tags": ["x"] * i} for i in range(4)] + [None]),
        "year": ["2020", '"MMXX"', None, "2023", '{"a": 1}'],  # a JSON-text fallback column
        "stars": pa.array([1, None, 3, 4, 5], pa.int32()),
        "created": pa.array([datetime(2024, 1, i + 1) for i in range(5)], pa.timestamp("us")),
    }
)


def _batch() -> pa.Table:
    batch = make_batch(TEXTS)
    for f in META.schema:
        batch = batch.append_column(f, META.column(f.name))
    return batch


def _unchanged(out: pa.Table, batch: pa.Table) -> None:
    head = out.slice(0, batch.num_rows)
    for name in META.column_names:
        assert head.schema.field(name).type == META.schema.field(name).type, name
        assert head.column(name).equals(batch.column(name)), name


@pytest.fixture(scope="module")
def blocklist(tmp_path_factory):
    path = tmp_path_factory.mktemp("lists") / "domains.txt"
    path.write_text("example.org\n")  # blocks every row's url
    return str(path)


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    return str(write_jsonl(tmp_path_factory.mktemp("ev") / "bench.jsonl", [{"question": ITEM, "answer": "north"}]))


ROW_WISE = {
    "normalize": {},
    "length": {"min_chars": 100},
    "gopher_quality": {},
    "gopher_repetition": {},
    "c4": {},
    "fineweb_quality": {},
    "pii": {},
    "language_id": {"languages": ["en"]},
    "url_filter": {},  # block_domains: the `blocklist` fixture
    "extract": {},
    "decontaminate": {"min_words": 5},
    "tokenize": {"tokenizer": "packaged:smollm2-135m"},
    "split": {"holdout_fraction": 0.5},
}


@pytest.mark.parametrize("op", list(ROW_WISE))
def test_row_wise_operators_keep_metadata(op, evals, blocklist):
    load_all()
    params = {**ROW_WISE[op], **({"eval_sets": [evals]} if op == "decontaminate" else {})}
    params |= {"block_domains": blocklist} if op == "url_filter" else {}
    batch = _batch()
    out = REGISTRY[op](stage=op, **params)(batch)
    _unchanged(out, batch)
    assert out.num_rows == batch.num_rows


def test_whole_dataset_steps_keep_metadata_in_their_row_pass(tmp_path):
    load_all()
    batch = _batch()
    exact = REGISTRY["exact_dedup"](
        stage="exact_dedup", _shared={"dups": pa.table({"_h": [normalized_key(TEXTS[1])], "survivor": ["d1"]})}
    )
    out = exact(batch)
    assert out.column("reason").to_pylist()[3] == "exact_duplicate"
    ids = REGISTRY["input_ids"](stage="input_ids", _shared={"dups": pa.table({"id": ["d0"], "first": ["elsewhere"]})})
    out = ids(out)
    assert out.column("reason").to_pylist()[0] == "input_duplicate_id"
    _unchanged(out, batch)


def test_model_scores_and_their_selections_keep_metadata(tmp_path):
    from operators.betr import NEG, POS, Betr
    from operators.percentile import PercentileFilter
    from operators.perplexity import Perplexity

    load_all()
    batch = _batch()
    out = Perplexity(stage="perplexity", max_tokens=16, batch_size=5)(batch)
    ppl = sorted(v for v in out.column("ppl").to_pylist() if v is not None)
    out = PercentileFilter(stage="band", column="ppl", band=[0, 50], _shared={"thresholds": {ALL: (None, ppl[1])}})(out)
    assert "ppl_above_band" in out.column("reason").to_pylist()
    texts = [topic_doc("cooking", i) for i in range(20)] + [topic_doc("sports", i) for i in range(20)]
    clf = tmp_path / "q.bin"
    clf.write_bytes(train_fasttext(texts, [HQ] * 20 + [CC] * 20, bucket=10_000, minCount=1).to_bytes())
    out = REGISTRY["quality_classifier"](stage="quality", model=str(clf))(out)
    targets = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "a"}])
    model = train_fasttext(texts, [POS] * 20 + [NEG] * 20, bucket=10_000, minCount=1).to_bytes()
    out = Betr(stage="betr", targets=str(targets), _shared={"model": model, "cutoff": 0.5})(out)
    assert out.column("quality").null_count < out.num_rows and "betr" in out.column_names
    _unchanged(out, batch)


def test_rephrased_rows_carry_their_parents_metadata():
    from operators.rephrase.op import Rephrase

    batch = _batch().slice(0, 2)
    with FakeOpenAI() as server:
        endpoint = {"base_url": server.base_url, "model": "fake", "max_retries": 1, "backoff_s": 0.01}
        out = Rephrase(stage="rephrase", backend="openai", endpoint=endpoint, styles=["wiki", "qa"])(batch)
    _unchanged(out, batch)
    new = out.slice(batch.num_rows).to_pylist()
    parents = batch.to_pylist()
    assert [r["id"] for r in new] == ["d0/wiki", "d0/qa", "d1/wiki", "d1/qa"]
    for r in new:
        parent = parents[int(r["parent_id"][1:])]
        assert {k: r[k] for k in META.column_names} == {k: parent[k] for k in META.column_names}
    assert out.schema.field("meta").type == META.schema.field("meta").type
