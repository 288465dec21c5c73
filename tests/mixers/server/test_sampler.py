"""Deterministic sampling and packing, without a server: draws, epochs, seeks, batches."""

import numpy as np
import pytest

from mixers.hashing import permutation
from mixers.server.corpus import Corpus
from mixers.server.sampler import PackedStream, build_batch, draw_domains, pack_holdout
from tests.mixers.conftest import EOS, SMALL_DOCS, decode, make_run


def test_draws_are_a_pure_function_of_seed_step_slot():
    w = np.array([0.5, 0.3, 0.2])
    a = draw_domains(7, 123, 64, w)
    assert np.array_equal(a, draw_domains(7, 123, 64, w))
    assert np.array_equal(a[:10], draw_domains(7, 123, 10, w))  # slot j does not depend on the batch size
    assert not np.array_equal(a, draw_domains(7, 124, 64, w))
    assert not np.array_equal(a, draw_domains(8, 123, 64, w))


def test_draws_follow_the_weights_and_skip_zero_weights():
    w = np.array([0.6, 0.0, 0.3, 0.1])
    ids = np.concatenate([draw_domains(0, s, 64, w) for s in range(500)])
    freq = np.bincount(ids, minlength=4) / len(ids)
    n = len(ids)
    for k, p in enumerate(w):
        assert abs(freq[k] - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1e-12
    assert freq[1] == 0


def test_permutation_is_a_permutation():
    p = permutation(42, 1000)
    assert sorted(p.tolist()) == list(range(1000)) and not np.array_equal(p, np.arange(1000))


def _stream_docs(tokens: np.ndarray) -> list[int]:
    """Document ids in the order their EOS appears."""
    return [doc for doc, pos in decode(tokens) if pos == -1]


def test_each_epoch_serves_every_train_document_once_whole_and_in_a_new_order(any_run_dir):
    root, truth = any_run_dir
    corpus = Corpus(str(root))
    for d in corpus.domains:
        s = PackedStream(corpus, d, seed=3, window=2)
        want = truth["train"][d]
        T = sum(len(t) for t in want.values())
        assert s.epoch_tokens == T
        e0, e1 = s.read(0, T), s.read(T, T)
        for ep in (e0, e1):
            docs = _stream_docs(ep)
            assert sorted(docs) == sorted(want)  # every train doc once, no holdout doc
            rebuilt = np.concatenate([want[g] for g in docs])
            assert np.array_equal(ep, rebuilt)  # documents are whole, contiguous and in order
        assert _stream_docs(e0) != _stream_docs(e1)
        assert ep[-1] == EOS


def test_seeking_anywhere_equals_reading_sequentially(any_run_dir):
    root, _ = any_run_dir
    corpus = Corpus(str(root))
    seq = PackedStream(corpus, "b", seed=1, window=3)
    ref = seq.read(0, 3 * seq.epoch_tokens + 17)
    rng = np.random.default_rng(0)
    fresh = PackedStream(corpus, "b", seed=1, window=3)
    for _ in range(40):
        a = int(rng.integers(0, len(ref) - 200))
        n = int(rng.integers(1, 200))
        assert np.array_equal(fresh.read(a, n), ref[a : a + n])


def test_other_seed_other_order(run_dir):
    corpus = Corpus(str(run_dir[0]))
    a = PackedStream(corpus, "a", seed=0).read(0, 500)
    b = PackedStream(corpus, "a", seed=1).read(0, 500)
    assert not np.array_equal(a, b)


def test_build_batch_fills_slots_from_cursors(any_run_dir):
    corpus = Corpus(str(any_run_dir[0]))
    streams = [PackedStream(corpus, d, seed=0) for d in corpus.domains]
    w = np.array([0.5, 0.25, 0.25])
    L = 16
    cur = np.array([5, 0, 2], np.int64)
    b = build_batch(streams, 0, 9, 12, L, w, cur)
    again = build_batch([PackedStream(corpus, d, seed=0) for d in corpus.domains], 0, 9, 12, L, w, cur)
    assert np.array_equal(b.tokens, again.tokens) and np.array_equal(b.domains, again.domains)
    assert np.array_equal(b.cursors - cur, np.bincount(b.domains, minlength=3))
    for k, s in enumerate(streams):
        rows = np.flatnonzero(b.domains == k)
        want = s.read(int(cur[k]) * L, len(rows) * L).reshape(-1, L)
        assert np.array_equal(b.tokens[rows], want)


def test_read_rows_writes_each_row_straight_from_the_windows(any_run_dir):
    corpus = Corpus(str(any_run_dir[0]))
    s = PackedStream(corpus, "b", seed=2, window=1)
    win = len(s.window_tokens(0, 0))
    rng = np.random.default_rng(1)
    # rows shorter than a window, about one, and longer (a row spans three windows); starts off any boundary
    for L in (7, win - 3, 2 * win + 5):
        for start in (0, 3, win - 2, s.epoch_tokens - L // 2):
            rows = np.sort(rng.choice(12, size=5, replace=False))
            out = np.full((12, L), -1, np.int32)
            s.read_rows(out, rows, start)
            assert np.array_equal(out[rows].reshape(-1), s.read(start, len(rows) * L))
            assert (np.delete(out, rows, axis=0) == -1).all()  # other rows untouched


def test_one_domain_batch_and_rank_rows_are_the_same_bytes(run_dir):
    corpus = Corpus(str(run_dir[0]))
    streams = [PackedStream(corpus, d, seed=0) for d in corpus.domains]
    L = 16
    b = build_batch(streams, 0, 3, 8, L, np.array([0.0, 1.0, 0.0]), np.array([0, 4, 0], np.int64))
    assert (b.domains == 1).all() and b.cursors.tolist() == [0, 12, 0]
    assert np.array_equal(b.tokens.reshape(-1), streams[1].read(4 * L, 8 * L))
    for lo, hi in ((0, 4), (4, 8), (2, 3)):  # a rank's slice, as Flight sends it
        ids, dom = b.rows(lo, hi)
        assert ids.type.list_size == L and len(ids) == hi - lo
        assert np.array_equal(ids.flatten().to_numpy().reshape(-1, L), b.tokens[lo:hi])
        assert dom.to_numpy().tolist() == b.domains[lo:hi].tolist()


def test_holdout_is_packed_in_order_and_padded(run_dir):
    root, truth = run_dir
    corpus = Corpus(str(root))
    toks, valid = pack_holdout(corpus, "c", 32, 1000)
    flat = np.concatenate([truth["holdout"]["c"][g] for g in sorted(truth["holdout"]["c"])])
    assert valid.sum() == len(flat) and (valid[:-1] == 32).all()
    assert np.array_equal(toks.reshape(-1)[: len(flat)], flat)
    assert (toks.reshape(-1)[len(flat) :] == 0).all()
    few, v = pack_holdout(corpus, "c", 32, 2)
    assert few.shape == (2, 32) and (v == 32).all()


def test_corpus_refuses_untokenized_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "shards" / "domain=x").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["1"], "text": ["t"]}), tmp_path / "shards" / "domain=x" / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"no `tokens` column; add `\{op: tokenize\}`"):
        Corpus(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no readable shards/ directory|no shards"):
        Corpus(str(tmp_path / "nowhere"))


def test_token_type_is_uint16_only_when_the_statistics_prove_every_id_fits(run_dir, small_run_dir, tmp_path):
    small = Corpus(str(small_run_dir[0]))
    assert small.token_type == np.uint16 and Corpus(str(run_dir[0])).token_type == np.int32
    s = PackedStream(small, "a", seed=0)
    toks = s.read(0, s.epoch_tokens)
    assert toks.dtype == np.uint16 and sorted(_stream_docs(toks)) == sorted(small_run_dir[1]["train"]["a"])
    make_run(tmp_path, SMALL_DOCS, statistics=False)  # no statistics: no proof, int32
    assert Corpus(str(tmp_path)).token_type == np.int32


def test_an_id_outside_the_narrow_type_is_an_error_not_a_wrapped_token(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_run(tmp_path, SMALL_DOCS, parts=1)
    corpus = Corpus(str(tmp_path))
    assert corpus.token_type == np.uint16
    path = tmp_path / "shards" / "domain=c" / "part-00000.parquet"
    t = pq.read_table(path)  # rewritten after indexing: same lengths, one id too large for uint16
    bad = t["tokens"].to_pylist()
    bad[0][0] = 70000
    t = t.set_column(t.schema.get_field_index("tokens"), "tokens", pa.array(bad, pa.list_(pa.int32())))
    pq.write_table(t, path, row_group_size=16)
    with pytest.raises(pa.ArrowInvalid, match="70000 not in range"):
        PackedStream(corpus, "c", seed=0, window=8).read(0, 10)
