"""rephrase: chunking and rejoining, styles and checks, the transformers and OpenAI-compatible backends
(against a stdlib fake that fails or stalls, and against `transformers serve`), and the closed loop in a run."""

import importlib.util
import itertools
import time

import pyarrow as pa
import pytest

from operators.models import load_tokenizer, resolve
from operators.rephrase.backends import Request
from operators.rephrase.op import Rephrase
from operators.rephrase.prompts import STYLES, chunk_text
from pipelines.recipe import RecipeError, parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from tests.conftest import make_batch, write_jsonl
from tests.operators.rephrase.servers import PREFIX, FakeOpenAI, Reply, TransformersServe, chunk_of, echo
from tests.operators.test_tokenize import Spy

FACTS = [
    "Water boils at one hundred degrees Celsius at sea level. At higher altitudes it boils at a lower point.",
    "The committee will meet again next week to discuss the budget. The new library opens next year.",
    "Most plants need sunlight, water and nutrients from the soil. Without light their leaves turn pale.",
]
REASONS = {"rephrase_missing_prefix", "rephrase_too_long", "rephrase_empty", "rephrase_backend_error"}


def long_doc(paragraphs: int = 4, sentences: int = 9) -> str:
    """Numbered sentences in paragraphs: rejoined output shows any chunk out of place."""
    paras = []
    for p in range(paragraphs):
        paras.append(
            " ".join(f"Sentence {p}.{k} tells how the old mill by river {p} ground grain." for k in range(sentences))
        )
    return "\n\n".join(paras)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("packaged:smollm2-135m")


def fake_op(server: FakeOpenAI, **kw) -> Rephrase:
    endpoint = {"base_url": server.base_url, "model": "fake", "max_retries": 2, "backoff_s": 0.02, "timeout_s": 5}
    endpoint.update(kw.pop("endpoint", {}))
    return Rephrase(stage="rephrase", backend="openai", endpoint=endpoint, **kw)


def synthetic(out: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in out.to_pylist() if r["synthetic"]}


# ------------------------------------------------------------------ chunking
def test_chunks_follow_sentence_and_paragraph_bounds_and_rejoin_exactly(tok):
    text = long_doc()
    chunks = chunk_text(text, tok, 60)
    assert len(chunks) > 4
    assert "".join(c.sep + c.text for c in chunks) == text  # nothing lost, duplicated or moved
    for c in chunks:
        assert c.text.startswith("Sentence ") and c.text.endswith("grain.")  # whole sentences only
        assert c.n_tokens <= 60
    assert [c.sep for c in chunks].count("\n\n") == 3


def test_a_chunk_past_two_thirds_of_the_target_ends_at_a_paragraph_break(tok):
    text = long_doc(4, 3)  # paragraphs of 3 sentences (~54 tokens); greedy packing to 80 would span them
    chunks = chunk_text(text, tok, 80)
    assert [c.text for c in chunks] == text.split("\n\n")
    assert [c.sep for c in chunks] == ["", "\n\n", "\n\n", "\n\n"]
    small = chunk_text(long_doc(2, 1), tok, 80)  # a short paragraph (< 2/3) joins the next one
    assert len(small) == 1 and small[0].text == long_doc(2, 1)


def test_an_overlong_sentence_is_cut_at_token_bounds(tok):
    words = " ".join(f"w{i}" for i in range(300))
    chunks = chunk_text(f"Short start. {words} end", tok, 50)
    assert chunks[0].text == "Short start."
    assert all(c.n_tokens <= 50 for c in chunks) and len(chunks) > 3
    assert "".join(c.sep + c.text for c in chunks[1:]).strip() == f"{words} end"
    assert chunk_text(" \n\n ", tok, 50) == []


# ------------------------------------------------------------------ OpenAI-compatible backend, fake server
def test_multi_chunk_documents_rejoin_in_order_per_parent_under_concurrency(tok):
    def out_of_order(body, attempt):  # later sentences answer sooner: completions arrive shuffled
        first = int(chunk_of(body).split()[1].split(".")[0]) if chunk_of(body).startswith("Sentence") else 0
        return Reply(content=f"{PREFIX}\n{chunk_of(body)}", delay=0.02 * (4 - first))

    docs = [long_doc(4), FACTS[0], long_doc(2, 5)]
    with FakeOpenAI(out_of_order) as server:
        op = fake_op(server, chunk_tokens=60, endpoint={"concurrency": 8})
        out = op(make_batch(docs))
    rows = synthetic(out)
    assert list(rows) == ["d0/wiki", "d1/wiki", "d2/wiki"]  # new rows follow the batch, in parent order
    for i, doc in enumerate(docs):
        r = rows[f"d{i}/wiki"]
        assert r["reason"] is None and r["text"] == doc  # the echo, with the prefix stripped, rejoined in order
        assert r["parent_id"] == f"d{i}" and r["style"] == "wiki" and r["domain"] == "web.wiki"
        assert r["rephrase_tokens_in"] == sum(c.n_tokens for c in chunk_text(doc, tok, 60))
    assert len(server.log) == sum(len(chunk_text(d, tok, 60)) for d in docs)
    assert out.column("id").to_pylist()[:3] == ["d0", "d1", "d2"]
    assert out.column("synthetic").to_pylist()[:3] == [False, False, False]
    m = op.drain_metrics()["openai"]
    assert m["requests"] == len(server.log) and m["tokens_generated"] > 0 and m["seconds"] > 0
    assert op.drain_metrics() == {}  # drained


def test_prefix_length_and_empty_checks_reject_with_reasons():
    def checks(body, attempt):
        text = chunk_of(body)
        if "NOPREFIX" in text:
            return Reply(content=f"Sure! Here you go: {text}")
        if "CUT" in text:
            return Reply(content=f"{PREFIX} {text} and on and on", finish="length")
        if "HUGE" in text:
            return Reply(content=f"{PREFIX} {text}", tokens=999)
        if "NOTHING" in text:
            return Reply(content=f"  {PREFIX}  ")
        return echo(body, attempt)

    texts = ["A fine NOPREFIX text.", "A CUT text.", "A HUGE text.", "NOTHING here.", FACTS[1]]
    with FakeOpenAI(checks) as server:
        out = fake_op(server, max_output_tokens=500)(make_batch(texts))
    rows = synthetic(out)
    got = {k: (r["reason"], r["stage"]) for k, r in rows.items()}
    assert got == {
        "d0/wiki": ("rephrase_missing_prefix", "rephrase"),
        "d1/wiki": ("rephrase_too_long", "rephrase"),
        "d2/wiki": ("rephrase_too_long", "rephrase"),
        "d3/wiki": ("rephrase_empty", "rephrase"),
        "d4/wiki": (None, None),
    }
    assert "does not start with 'Here is a paraphrased version:'" in rows["d0/wiki"]["error"]
    assert rows["d0/wiki"]["text"].startswith("Sure!")  # the raw output stays for inspection
    assert "max_new_tokens=512" in rows["d1/wiki"]["error"]
    assert "999 tokens > max_output_tokens=500" in rows["d2/wiki"]["error"]
    assert rows["d4/wiki"]["text"] == FACTS[1]
    assert out.column("reason").to_pylist()[:5] == [None] * 5  # originals kept (keep_original default)

    with FakeOpenAI(checks) as server:  # the same truncated output is accepted when allowed
        out = fake_op(server, allow_truncated=True)(make_batch(["A CUT text."]))
    assert synthetic(out)["d0/wiki"]["reason"] is None


def test_retries_back_off_exponentially_then_succeed():
    def flaky(body, attempt):
        if attempt < 2:
            return Reply(status=503 if attempt == 0 else 500)
        return echo(body, attempt)

    with FakeOpenAI(flaky) as server:
        op = fake_op(server, endpoint={"max_retries": 3, "backoff_s": 0.2})
        out = op(make_batch([FACTS[0]]))
    assert synthetic(out)["d0/wiki"]["reason"] is None
    times = [t for t, _ in server.log]
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.2 <= gaps[0] < 0.4 <= gaps[1] < 1.0  # 0.2 s (+ up to 10% jitter), then twice that
    assert op.drain_metrics()["openai"]["retries"] == 2


def test_errors_and_stalls_end_in_removed_with_reasons_after_bounded_retries():
    def broken(body, attempt):
        text = chunk_of(body)
        if "STALL" in text:
            return Reply(delay=3.0, content="too late")
        if "BAD" in text:
            return Reply(status=400)
        if "LIMIT" in text:
            return Reply(status=429, headers={"Retry-After": "0.3"})
        return Reply(status=500)

    texts = ["Always 500 here.", "A STALL here.", "A BAD request.", "A LIMIT hit.", ""]
    with FakeOpenAI(broken) as server:
        op = fake_op(server, endpoint={"max_retries": 2, "backoff_s": 0.01, "timeout_s": 0.4})
        t0 = time.monotonic()
        out = op(make_batch(texts))
        elapsed = time.monotonic() - t0
    rows = synthetic(out)
    assert set(rows) == {"d0/wiki", "d1/wiki", "d2/wiki", "d3/wiki"}  # the empty document has nothing to rephrase
    assert all(r["reason"] == "rephrase_backend_error" for r in rows.values())
    assert "HTTP 500" in rows["d0/wiki"]["error"] and "gave up after 3 attempts" in rows["d0/wiki"]["error"]
    assert "timed out" in rows["d1/wiki"]["error"] and "gave up after 3 attempts" in rows["d1/wiki"]["error"]
    assert "HTTP 400" in rows["d2/wiki"]["error"] and "not retried" in rows["d2/wiki"]["error"]
    assert "HTTP 429" in rows["d3/wiki"]["error"]
    tries: dict[str, list[float]] = {}
    for t, body in server.log:
        tries.setdefault(chunk_of(body), []).append(t)
    assert {k: len(v) for k, v in tries.items()} == {
        "Always 500 here.": 3,
        "A STALL here.": 3,
        "A BAD request.": 1,
        "A LIMIT hit.": 3,
    }
    limit = tries["A LIMIT hit."]
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(limit))  # Retry-After honoured over the 10 ms backoff
    assert elapsed < 6.0  # three timed-out 0.4 s attempts, not three 3 s stalls
    assert op.drain_metrics()["openai"]["errors"] == 4


def test_qps_limit_spaces_request_starts():
    with FakeOpenAI() as server:
        op = fake_op(server, endpoint={"concurrency": 8, "qps": 20})
        op(make_batch([f"Fact number {i} is short." for i in range(8)]))
    times = sorted(t for t, _ in server.log)
    assert len(times) == 8 and times[-1] - times[0] >= 7 / 20 - 0.02


def test_request_seeds_are_stable_per_chunk_and_sampling_settings_reach_the_server():
    runs = []
    with FakeOpenAI() as server:
        for seed in (5, 5, 6):
            server.log.clear()
            fake_op(server, temperature=0.7, top_p=0.8, max_new_tokens=77, seed=seed)(make_batch(FACTS[:2]))
            runs.append({chunk_of(b): b["seed"] for _, b in server.log})
    assert runs[0] == runs[1] and len(set(runs[0].values())) == 2  # per chunk, not per position or call
    assert all(runs[2][k] != v for k, v in runs[0].items())
    b = server.log[0][1]
    assert (b["model"], b["temperature"], b["top_p"], b["max_tokens"]) == ("fake", 0.7, 0.8, 77)
    assert [m["role"] for m in b["messages"]] == ["system", "user"]


def test_styles_templates_domains_and_dropped_originals():
    template = {"prompt": "Summarise in one line.\n\nText: {text}", "prefix": "Summary:", "system": None}
    with FakeOpenAI(lambda body, attempt: Reply(content=f"Summary: {chunk_of(body)}")) as server:
        op = fake_op(
            server,
            styles=["tldr", "easy"],
            templates={"tldr": template},
            keep_original=False,
            domain_template="synthetic-{style}",
        )
        batch = make_batch([FACTS[0], FACTS[1], "gone"], reasons=[None, None, "earlier_reason"])
        out = op(batch)
    rows = out.to_pylist()
    assert [r["id"] for r in rows] == ["d0", "d1", "d2", "d0/tldr", "d0/easy", "d1/tldr", "d1/easy"]
    assert [(r["reason"], r["stage"]) for r in rows[:3]] == [
        ("rephrase_replaced", "rephrase"),
        ("rephrase_replaced", "rephrase"),
        ("earlier_reason", "earlier"),  # already removed: untouched, not rephrased
    ]
    assert rows[3]["text"] == FACTS[0] and rows[3]["domain"] == "synthetic-tldr"
    assert rows[4]["text"] == f"Summary: {FACTS[0]}"  # easy has no prefix to strip
    roles = {b["messages"][-1]["content"].split()[0]: [m["role"] for m in b["messages"]] for _, b in server.log}
    assert roles == {"Summarise": ["user"], "For": ["system", "user"]}  # tldr's system: null
    # synthetic rows are never rephrased again
    again = op.apply(out, op.active(out))
    assert again.num_rows == out.num_rows


def test_sample_fraction_and_max_chunks_bound_what_is_rephrased():
    batch = make_batch([f"Fact number {i} is short." for i in range(40)])
    with FakeOpenAI() as server:
        op = fake_op(server, sample_fraction=0.5, seed=1)
        whole = {r["parent_id"] for r in synthetic(op(batch)).values()}
        one_by_one = {r["parent_id"] for i in range(40) for r in synthetic(op(batch.slice(i, 1))).values()}
        assert 10 <= len(whole) <= 30 and whole == one_by_one  # a hash of (seed, id): batching does not matter
        other_seed = {r["parent_id"] for r in synthetic(fake_op(server, sample_fraction=0.5, seed=2)(batch)).values()}
        assert other_seed != whole
        out = fake_op(server, max_chunks=2, chunk_tokens=60)(make_batch([long_doc(4), FACTS[0]]))
    assert list(synthetic(out)) == ["d1/wiki"]  # the 12-chunk document is left as it is
    assert out.column("reason").to_pylist() == [None, None, None]


def test_documents_over_max_chars_are_left_as_they_are_untokenized():
    text = long_doc(4)
    with FakeOpenAI() as server:
        op = fake_op(server, max_chars=len(text) - 1, keep_original=False)
        op.tok = Spy(op.tok)
        out = op(make_batch([text, FACTS[0]]))
    assert list(synthetic(out)) == ["d1/wiki"]
    assert out.column("reason").to_pylist() == [None, "rephrase_replaced", None]  # d0 untouched, d1 replaced
    assert 0 < sum(n for call in op.tok.calls for n in call) <= len(FACTS[0])  # d0 never reached the tokenizer
    with pytest.raises(RecipeError, match="greater than or equal to 1"):
        parse_recipe("inputs: [{path: x, domain: web}]\nstages: [{op: rephrase, max_chars: 0}]", check_inputs=False)
    with pytest.raises(ValueError, match=r"max_chars: Input should be greater than or equal to 1, got 0"):
        Rephrase.validate_params(stage="r", max_chars=0)


def test_settings_fail_at_validation_with_useful_messages(tmp_path):
    def recipe(stage: str) -> str:
        return f"inputs:\n  - {{path: x.jsonl, domain: web}}\nstages:\n  - {stage}\n"

    cases = {
        "{op: rephrase, styles: [wiki, poetic]}": "unknown style 'poetic'; known styles: easy, hard, qa, wiki",
        "{op: rephrase, backend: openai}": "backend 'openai' needs `endpoint",
        "{op: rephrase, templates: {t: {prompt: no placeholder}}, styles: [t]}": "exactly once",
        "{op: rephrase, top_p: 0}": "top_p (line 4): Input should be greater than 0",
        "{op: rephrase, sample_fraction: 1.5}": "sample_fraction (line 4): Input should be less than or equal to 1",
        "{op: rephrase, domain_template: '{lang}.{style}'}": "may use only {domain} and {style}",
        "{op: rephrase, domain_template: '{domain}/{style}'}": "domain 'web/wiki' is not allowed",
        "{op: rephrase, endpoint: {base_url: 'http://x', model: m}}": "only for backend 'openai'",
        "{op: rephrase, backend: openai, endpoint: {base_url: 'http://x', model: m, qps: 0}}": "greater than 0",
    }
    for stage, message in cases.items():
        with pytest.raises(RecipeError) as e:
            parse_recipe(recipe(stage), check_inputs=False)
        assert message in str(e.value), (stage, str(e.value))
    assert "line 4" in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_backend_without_vllm_fails_at_validation_naming_the_alternatives():
    with pytest.raises(RecipeError) as e:
        parse_recipe("inputs: [{path: x, domain: web}]\nstages: [{op: rephrase, backend: vllm}]", check_inputs=False)
    msg = str(e.value)
    assert "needs vLLM, which is not installed" in msg and "backend 'openai' against a `vllm serve`" in msg
    with pytest.raises(ValueError, match="needs vLLM"):
        Rephrase(stage="rephrase", backend="vllm")


# ------------------------------------------------------------------ real generation with the packaged model
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, as a Ray actor with num_cpus=1 has: on a shared 2-core machine two threads
    stall whenever another process holds a core (batched generation then runs ~20x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local(one_thread):
    return Rephrase(
        stage="rephrase",
        styles=["easy", "wiki"],
        temperature=0,
        max_new_tokens=NEW_TOKENS,
        batch_size=4,
        allow_truncated=True,
    )


@pytest.fixture(scope="module")
def local_rows(local):
    """Two documents in two styles: one left-padded generate call of four prompts."""
    out = local(make_batch(FACTS[:2], domains=["web", "news"]))
    return synthetic(out), local.drain_metrics()


def test_transformers_backend_generates_rows_for_every_document_and_style(local_rows):
    rows, metrics = local_rows
    assert list(rows) == ["d0/easy", "d0/wiki", "d1/easy", "d1/wiki"]
    for r in rows.values():
        assert r["generator"] == f"transformers:packaged:smollm2-135m|t0_p0.9_n{NEW_TOKENS}_s0"
        assert 0 < r["rephrase_tokens_out"] <= NEW_TOKENS and r["rephrase_tokens_in"] > 10
        assert r["reason"] is None or r["reason"] in REASONS
    easy = [r for r in rows.values() if r["style"] == "easy"]
    assert all(r["reason"] is None and r["text"].strip() for r in easy)  # no prefix to miss, truncation allowed
    assert rows["d1/easy"]["domain"] == "news.easy"
    # the model writes English about the same thing (greedy, so this is reproducible)
    assert any(w in rows["d0/easy"]["text"].lower() for w in ("water", "boil"))
    m = metrics["transformers"]
    assert m["requests"] == 4 and m["tokens_generated"] == sum(r["rephrase_tokens_out"] for r in rows.values())


def test_left_padded_batches_generate_what_single_prompts_do(local, local_rows):
    rows, _ = local_rows
    be = local.backend
    reqs = [Request(f"k{i}", STYLES["easy"].messages(t), 0) for i, t in enumerate(FACTS[:2])]
    wiki = be.encode(Request("w", STYLES["wiki"].messages(FACTS[0]), 0))
    assert all(len(be.encode(r)) < len(wiki) for r in reqs)  # in the batch these were padded on the left
    single = [be.generate_ids([be.encode(r)], 0)[0] for r in reqs]
    assert [r.text.strip() for r in single] == [rows["d0/easy"]["text"], rows["d1/easy"]["text"]]
    assert [r.n_tokens for r in single] == [
        rows["d0/easy"]["rephrase_tokens_out"],
        rows["d1/easy"]["rephrase_tokens_out"],
    ]


def test_openai_backend_against_transformers_serve_matches_local_generation(local_rows):
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")
    folder = resolve("packaged:smollm2-135m")
    with TransformersServe(folder) as server:
        op = Rephrase(
            stage="rephrase",
            backend="openai",
            endpoint={"base_url": server.base_url, "model": folder, "concurrency": 2, "timeout_s": 120},
            styles=["easy"],
            temperature=0,
            max_new_tokens=NEW_TOKENS,
            allow_truncated=True,
        )
        out = op(make_batch(FACTS[:2], domains=["web", "news"]))
    rows = synthetic(out)
    assert [r["reason"] for r in rows.values()] == [None, None], [r["error"] for r in rows.values()]
    assert rows["d0/easy"]["generator"].startswith(f"openai:{folder}@http://127.0.0.1:")
    # the same model, chat template and greedy decoding as the local backend: the same text and token counts
    here, _ = local_rows
    for k in ("d0/easy", "d1/easy"):
        assert (rows[k]["text"], rows[k]["rephrase_tokens_out"]) == (here[k]["text"], here[k]["rephrase_tokens_out"])


# ------------------------------------------------------------------ closed loop in a run
@pytest.mark.parametrize("engine", ["ray", "local"])
def test_closed_loop_run_scores_and_dedups_synthetic_rows_and_conserves(tmp_path, ray_session, engine):
    rewrite = "A watermill uses the flow of a river to turn a wheel that grinds grain into flour for bread."

    def server_side(body, attempt):
        text = chunk_of(body)
        if "REWRITE" in text:
            return Reply(content=f"{PREFIX} {rewrite}")
        if "NOPREFIX" in text:
            return Reply(content=text)
        return echo(body, attempt)  # a "rephrasing" identical to its original: minhash_dedup removes it

    docs = [
        {"id": "a", "text": long_doc(2, 4)},
        {"id": "b", "text": "REWRITE this note about the old mill and its wheel, please, in other words."},
        {"id": "c", "text": "NOPREFIX " + FACTS[2]},
        {"id": "d", "text": FACTS[0]},
    ]
    write_jsonl(tmp_path / "in" / "docs.jsonl", docs)
    with FakeOpenAI(server_side) as server:
        recipe = parse_recipe(
            f"""inputs:
  - {{path: "{tmp_path}/in/docs.jsonl", domain: web, id_field: id}}
stages:
  - op: rephrase
    backend: openai
    endpoint: {{base_url: "{server.base_url}", model: fake, max_retries: 1, backoff_s: 0.01}}
    chunk_tokens: 40
  - {{op: perplexity, max_tokens: 32, batch_size: 8}}
  - {{op: minhash_dedup, threshold: 0.8}}
output: {{dir: "{tmp_path}/out", shard_mb: 1}}
"""
        )
        m = run(recipe, engine=engine)  # in process too: an operator that adds rows
    assert m["cluster"]["engine"] == engine
    c = m["conservation"]
    assert c["ok"] and (c["read"], c["synthetic"], c["kept"], c["removed"]) == (4, 4, 5, 3)
    stage = {s["stage"]: s for s in m["stages"]}
    assert stage["rephrase"]["added"] == 4 and stage["rephrase"]["rows_out"] == 4 + 4 - 1
    assert stage["rephrase"]["removed"] == {"rephrase_missing_prefix": 1}
    gen = stage["rephrase"]["report"]["generation"]["openai"]
    assert gen["requests"] >= 5 and gen["tokens_generated"] > 0 and gen["seconds"] > 0
    assert stage["minhash_dedup"]["removed"] == {"minhash_duplicate": 2}

    kept = {r["id"]: r for r in read_shards(str(tmp_path / "out" / "shards")).to_pylist()}
    assert set(kept) == {"a", "b", "c", "d", "b/wiki"}
    assert kept["b/wiki"]["text"] == rewrite and kept["b/wiki"]["domain"] == "web.wiki"
    assert kept["b/wiki"]["synthetic"] and kept["b/wiki"]["parent_id"] == "b" and kept["b/wiki"]["ppl"] > 0
    assert kept["a"]["synthetic"] is False and kept["a"]["ppl"] > 0
    removed = {r["id"]: r for r in read_shards(str(tmp_path / "out" / "removed")).to_pylist()}
    # echoed "rephrasings" are near-duplicates of their originals; the original (lower id) survives
    assert {k: (r["reason"], r["dup_of"]) for k, r in removed.items() if r["stage"] == "minhash_dedup"} == {
        "a/wiki": ("minhash_duplicate", "a"),
        "d/wiki": ("minhash_duplicate", "d"),
    }
    assert removed["c/wiki"]["reason"] == "rephrase_missing_prefix" and removed["c/wiki"]["synthetic"]
