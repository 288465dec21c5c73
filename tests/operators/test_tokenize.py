"""tokenize writes ids with EOS, in bounded calls that match whole-document tokenization."""

import itertools
import json
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.base import params_model
from operators.tokenize import Tokenize, exact_cuts, pieces
from storage.schema import READ_SCHEMA

ROOT = Path(__file__).resolve().parents[2]


def _batch(texts, domains=None, removed=()):
    n = len(texts)
    cols = {f.name: [None] * n for f in READ_SCHEMA}
    cols.update(id=[f"d{i}" for i in range(n)], text=texts, domain=domains or ["web"] * n, source=["t"] * n)
    cols["reason"] = ["x" if i in removed else None for i in range(n)]
    return pa.table(cols, schema=READ_SCHEMA)


def test_tokenize_appends_eos_and_counts():
    op = Tokenize(stage="tokenize")
    out = op(_batch(["Hello world", "Another document here."], removed=()))
    toks = out.column("tokens").to_pylist()
    assert all(t[-1] == op.eos for t in toks)
    assert op.tok.backend.decode(toks[0][:-1]) == "Hello world"
    assert out.column("n_tokens").to_pylist() == [len(t) for t in toks]
    assert out.schema.field("tokens").type == pa.list_(pa.int32())


def test_tokenize_skips_removed_rows_and_truncates():
    op = Tokenize(stage="tokenize", max_tokens=2)
    out = op(_batch(["one two three four five", "six"], removed=(1,)))
    assert out.column("n_tokens").to_pylist() == [3, None]


# ------------------------------------------------------------------ bounded work per document
SUBJECTS = ["The old miller", "Our committee", "A small fort", "She", "Water", "The 3rd team", "Élodie's cousin"]
VERBS = ["guarded", "discussed", "boiled near", "opened", "walked past", "re-read", "couldn't find"]
OBJECTS = ["the river crossing", "budget #42", "100 °C", "the door", "a long park", "“the final”", "x = f(a, b)"]
ENDS = [".", "!", "?", "...", ";", " — really.", ": yes."]


def prose(chars: int, seed: int = 0) -> str:
    """Ordinary prose of varied sentences and paragraphs, about ``chars`` characters long."""
    rng = random.Random(seed)
    out, n = [], 0
    while n < chars:
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} in {rng.randrange(1000, 2100)}"
        sep = rng.choice([" ", " ", " ", " ", "\n", "\n\n", "  ", "\t"])
        out.append(sentence + rng.choice(ENDS) + sep)
        n += len(out[-1])
    return "".join(out)


def stdlib_source() -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()


class Spy:
    """Wraps a tokenizer; records the character count of every text of every call."""

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def ids(self, texts):  # a TokenIds (tokenize)
        self.calls.append([len(t) for t in texts])
        return self.tok.ids(texts)

    def __call__(self, texts, **kw):  # a transformers tokenizer (perplexity, rephrase)
        self.calls.append([len(t) for t in ([texts] if isinstance(texts, str) else texts)])
        return self.tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.fixture(scope="module")
def tok():
    return Tokenize(stage="tokenize").tok


def whole(tok, text):
    return tok.ids([text])[0]


def test_pieces_join_back_and_end_at_spaces_or_newlines():
    text = prose(50_000)
    parts = list(pieces(text, 1000))
    assert "".join(parts) == text and len(parts) > 50
    assert all(0 < len(p) <= 1000 for p in parts)
    for a, b in itertools.pairwise(parts):  # before a space or after a newline, between two non-spaces
        assert (b[0] == " " and not b[1].isspace()) or (a[-1] == "\n" and not b[0].isspace())
        assert not a[-1].isspace() or a[-1] == "\n"
    assert list(pieces("x" * 2500, 1000)) == ["x" * 1000, "x" * 1000, "x" * 500]  # no boundary: hard cuts
    assert list(pieces("", 10)) == [""] and list(pieces("short", 10)) == ["short"]


@pytest.mark.parametrize("source", ["stdlib", "prose"])
def test_chunked_tokenization_equals_whole_document_tokenization(tok, source):
    text = stdlib_source() if source == "stdlib" else prose(120_000, seed=1)
    op = Tokenize(stage="tokenize", chunk_chars=3_000)
    assert op.exact_cuts
    op.tok = Spy(op.tok)
    out = op(_batch([text, "Hello world"]))
    assert len(op.tok.calls) > 30  # really cut into many pieces
    assert out.column("tokens").to_pylist() == [[*whole(tok, text), op.eos], [*whole(tok, "Hello world"), op.eos]]
    assert out.column("n_tokens").to_pylist()[0] == len(whole(tok, text)) + 1


def test_a_document_over_max_chars_is_removed_untokenized():
    op = Tokenize(stage="tok", max_chars=100)
    op.tok = Spy(op.tok)
    out = op(_batch(["short one", "word " * 30, "x" * 100, "also short"], removed=(3,)))
    assert out.column("reason").to_pylist() == [None, "tokenize_too_long", None, "x"]
    assert out.column("stage").to_pylist()[1] == "tok"
    assert out.column("tokens").to_pylist()[1] is None and out.column("n_tokens").to_pylist()[1] is None
    assert out.column("n_tokens").to_pylist()[3] is None
    assert sorted(n for call in op.tok.calls for n in call) == [9, 100]  # the tokenizer never saw the long one
    assert Tokenize(stage="t", max_chars=None)(_batch(["word " * 30])).column("reason").to_pylist() == [None]


def test_a_multi_megabyte_document_goes_to_the_tokenizer_a_chunk_at_a_time(tok):
    text = prose(3_000_000, seed=2)
    op = Tokenize(stage="tokenize")
    op.tok = Spy(op.tok)
    out = op(_batch([text, "Hello", "world"]))
    assert max(sum(call) for call in op.tok.calls) <= op.chunk_chars == 100_000
    assert len(op.tok.calls) >= 30
    ids = out.column("tokens")[0].values.to_numpy()
    assert np.array_equal(ids[:-1], np.asarray(whole(tok, text), dtype=np.int32)) and ids[-1] == op.eos
    # with max_tokens, pieces past the limit are never tokenized
    capped = Tokenize(stage="tokenize", max_tokens=1000)
    capped.tok = Spy(capped.tok)
    assert capped(_batch([text])).column("tokens").to_pylist()[0] == [*ids[:1000].tolist(), op.eos]
    assert len(capped.tok.calls) == 1


def test_new_limits_are_validated():
    with pytest.raises(ValueError, match=r"max_chars: Input should be greater than or equal to 1, got 0"):
        Tokenize.validate_params(stage="t", max_chars=0)
    with pytest.raises(ValueError, match=r"chunk_chars: Input should be greater than or equal to 1, got 0"):
        Tokenize(stage="t", chunk_chars=0)
    model = params_model(Tokenize)
    assert model.model_validate({}).model_dump()["max_chars"] == 10_000_000
    assert model.model_validate({"max_chars": None}).max_chars is None
    for bad in ({"max_chars": 0}, {"chunk_chars": 0}):
        with pytest.raises(ValidationError, match="greater than or equal to 1"):
            model.model_validate(bad)


def test_exact_cuts_detects_a_tokenizer_that_marks_every_call_start(tok):
    class Prefixing:  # like SentencePiece's Metaspace: the start of each call is special
        def ids(self, texts):
            return [[1, *tok.ids([t])[0]] for t in texts]

    assert exact_cuts(tok) and not exact_cuts(Prefixing())


SAMPLES = [
    "Hello world, it's 2024: one two  three.",
    "def f(a, b):\n\treturn a + b  # sum\n\n\n    x = f(1, 2)\r\n",
    "<|endoftext|> special-token strings <|im_start|>user\nhi<|im_end|> in the text",
    "Grüße aus Köln, 東京 and café au lait — “quoted” 🚀 émoji   \u00a0nbsp\u200bzero-width",
    "",
    "   leading and trailing spaces   ",
    "UPPER lower MiXeD 12345 3.14159 http://example.com/a?b=c#d",
]


@pytest.mark.parametrize("spec", ["packaged:smollm2-135m", "packaged:minilm-l6-v2"])
def test_token_ids_are_transformers_ids_fresh_and_from_the_cache(spec, tmp_path, monkeypatch):
    """Byte-level BPE and WordPiece (lowercasing): the backend path, built or cached, gives transformers' ids."""
    from operators.models import load_token_ids, load_tokenizer

    monkeypatch.setattr("operators.models.token_ids_dir", lambda: tmp_path)
    hf = load_tokenizer(spec)
    want = hf(SAMPLES, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    fresh = load_token_ids(spec)
    (entry,) = tmp_path.glob("*.json")
    cached = load_token_ids(spec)
    assert fresh.ids(SAMPLES) == want and cached.ids(SAMPLES) == want
    assert fresh.eos_token_id == cached.eos_token_id == hf.eos_token_id
    entry.write_text("{damaged")  # a broken cache entry is rebuilt, never trusted
    assert load_token_ids(spec).ids(SAMPLES) == want and entry.read_text().startswith("{")
    assert json.loads(entry.read_text())["eos_token_id"] == hf.eos_token_id


def test_a_cached_tokenizer_loads_without_importing_transformers():
    code = (
        "import sys; from operators.tokenize import Tokenize; op = Tokenize(stage='t'); "
        "print('transformers' in sys.modules, 'torch' in sys.modules)"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT) for _ in "ab"]
    assert runs[1].stdout.split() == ["False", "False"], runs[0].stderr[-2000:] + runs[1].stderr[-2000:]


def test_the_tokenizer_cache_key_covers_every_file_a_tokenizer_is_built_from(tmp_path, monkeypatch):
    """Two folders differing only in vocab.txt (no tokenizer.json): each gets its own ids, transformers' ids."""
    import shutil

    from operators.models import load_token_ids, load_tokenizer, resolve

    monkeypatch.setattr("operators.models.token_ids_dir", lambda: tmp_path / "cache")
    src = Path(resolve("packaged:minilm-l6-v2"))
    folders = []
    for name, swap in (("plain", False), ("swapped", True)):
        d = tmp_path / name
        d.mkdir()
        for f in ("config.json", "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"):
            shutil.copy(src / f, d / f)
        if swap:  # "hello" and "world" trade ids
            vocab = (d / "vocab.txt").read_text(encoding="utf-8").split("\n")
            a, b = vocab.index("hello"), vocab.index("world")
            vocab[a], vocab[b] = vocab[b], vocab[a]
            (d / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
        folders.append(d)
    texts = ["hello world", "world, hello!"]
    got = [load_token_ids(str(d)).ids(texts) for d in folders]
    want = [load_tokenizer(str(d))(texts, add_special_tokens=False)["input_ids"] for d in folders]
    assert got == want and got[0] != got[1]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    assert [load_token_ids(str(d)).ids(texts) for d in folders] == want  # from the cache, each its own


def test_an_unwritable_tokenizer_cache_costs_time_not_the_run(tmp_path, monkeypatch):
    from operators.models import load_token_ids

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr("operators.models.token_ids_dir", lambda: blocker / "cache")
    assert load_token_ids("packaged:minilm-l6-v2").ids(["hello world"]) == [[7592, 2088]]


def test_a_backend_that_cannot_be_copied_is_called_through_transformers():
    """A pre-tokenizer written in Python (RoFormer's Jieba) makes tokenizers refuse to serialise the backend."""
    from tokenizers.pre_tokenizers import PreTokenizer

    from operators.models import TokenIds, load_tokenizer

    class Words:
        def pre_tokenize(self, pretok):
            pretok.split(lambda i, s: s.split(" ", "removed"))

    hf = load_tokenizer("packaged:minilm-l6-v2")
    hf.backend_tokenizer.pre_tokenizer = PreTokenizer.custom(Words())
    ids = TokenIds.of(hf)
    assert ids.backend is None and ids.hf is hf
    assert ids.ids(["hello world"]) == hf(["hello world"], add_special_tokens=False)["input_ids"]
