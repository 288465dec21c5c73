"""BETR (Mizrahi et al. 2025): select documents that resemble benchmark examples, via a cheap fastText proxy."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import (
    AtLeastOne,
    ExistingFile,
    GlobalStage,
    Prepared,
    Share,
    StageContext,
    mark_removed,
    register,
    share,
    tables,
)
from operators.classifier import SCORE_CHARS, FastTextModel, embed, train_fasttext
from operators.models import text_heads
from operators.percentile import token_weights
from storage.evalsets import load_eval_set
from storage.schema import seeded_hash, with_column

logger = logging.getLogger(__name__)

POS, NEG = "__label__pos", "__label__neg"


def hash64(ids: list[str], seed: int) -> np.ndarray:
    """A uint64 per id that depends only on (seed, id): the deterministic sample order."""
    return np.fromiter((seeded_hash(i, seed) for i in ids), dtype=np.uint64, count=len(ids))


def load_targets(path: str, fields: list[str] | None = None, limit: int | None = None) -> list[str]:
    """Target examples as text, read as an eval set (:mod:`storage.evalsets`: JSONL/Parquet/text)."""
    out = [e.text for e in load_eval_set(path, fields=fields, limit=limit)]
    if not out:
        raise ValueError(f"betr: no target examples with text in {path}")
    return out


def rank_scores(targets: np.ndarray, docs: np.ndarray, chunk: int = 256) -> np.ndarray:
    """BETR's document score: for every target, rank the documents by cosine similarity
    (normalized rank in [0, 1], 1 = most similar); a document's score is its best rank over targets."""
    n = docs.shape[0]
    best = np.zeros(n, dtype=np.float64)
    denom = max(1, n - 1)
    for s in range(0, targets.shape[0], chunk):
        sims = targets[s : s + chunk] @ docs.T  # (t, n)
        ranks = np.empty_like(sims, dtype=np.float64)
        order = np.argsort(sims, axis=1, kind="stable")
        np.put_along_axis(ranks, order, np.arange(n, dtype=np.float64)[None, :] / denom, axis=1)
        best = np.maximum(best, ranks.max(axis=0))
    return best


def _embed_all(spec: str, texts: list[str], batch_size: int) -> np.ndarray:
    from operators.models import load_sentence_transformer

    return embed(load_sentence_transformer(spec), texts, batch_size)


@register("betr")
class Betr(GlobalStage):
    """Benchmark-targeted ranking: keep the documents most like a set of target examples.

    ``prepare`` (driver + Ray Data):
      1. sample ``sample_size`` live documents deterministically: the smallest hashes of
         (seed, id), found with a Ray Data pass over hashes only, then a second pass that
         fetches just those rows;
      2. embed the targets and the sample (sentence-transformers, in a GPU task when the
         cluster has GPUs, else on the driver);
      3. every target ranks the sample by cosine similarity; a document's score is its best
         rank over targets; the top ``positive_fraction`` of the sample are positives;
      4. train fastText on the sample (negatives downsampled to the positives' count; a
         ``validation_fraction`` of that balanced set held out to report accuracy);
      5. score every live document with fastText in a Ray Data pass and choose the cutoff so
         that the kept documents hold ``keep_fraction`` of the tokens (``n_tokens`` when the
         column exists, else whitespace tokens): documents are taken from the best score
         down until the target is reached, so the kept share overshoots by less than one
         document (plus ties at the cutoff). This pass gathers one (score, tokens) pair per
         row on the driver (16 bytes a row).
    The row-wise pass recomputes the fastText score (the same model bytes give the same
    scores), writes ``betr`` and removes rows below the cutoff (``betr_below_cutoff``).
    Only the sample is ever embedded; the full corpus sees only the cheap classifier.

    Long documents are handled by a prefix: every document is cut to its first ``max_chars``
    characters (in Arrow, before it becomes a Python string) for sampling, fastText training
    and scoring, and the encoder reads at most ``EMBED_CHARS`` (4096) of those, so the work per
    document is bounded whatever its length; the stored text is not changed. (The token
    weights of the cutoff still count a document's whole text.)

    Args:
        targets: JSONL file of target (benchmark) examples.
        target_fields: fields to concatenate per example; default: every string field.
        max_targets: use at most this many examples (the first ones).
        sample_size: documents to embed and label.
        positive_fraction: share of the sample labelled positive (paper: 0.1).
        keep_fraction: share of tokens to keep (paper: 0.1 at its scales).
        encoder: sentence-transformers spec used for targets and sample.
        embed_batch_size: texts per embedding batch.
        validation_fraction: share of the labelled set held out for the accuracy report.
        seed: changes the sample and the held-out set.
        max_chars: characters of a document that fastText is trained on and scores (and that
            the sample holds); null: whole documents.
        lr, dim, ws, min_count, epoch, word_ngrams, bucket: fastText hyperparameters (paper:
            0.03, 128, 10, 5, 5, 2; ``bucket`` is fastText's hashed n-gram table, 2M by default:
            the model file is about (vocabulary + bucket) x dim x 4 bytes).
    """

    adds = ("betr",)

    def __init__(
        self,
        *,
        targets: ExistingFile,
        target_fields: list[str] | None = None,
        max_targets: AtLeastOne | None = None,
        sample_size: Annotated[int, Field(ge=10)] = 10_000,
        positive_fraction: Share = 0.1,
        keep_fraction: Share = 0.1,
        encoder: str = "packaged:minilm-l6-v2",
        embed_batch_size: int = 64,
        validation_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.1,
        seed: int = 0,
        lr: float = 0.03,
        dim: int = 128,
        ws: int = 10,
        min_count: int = 5,
        epoch: int = 5,
        word_ngrams: int = 2,
        bucket: int = 2_000_000,
        max_chars: Annotated[int | None, Field(ge=1)] = SCORE_CHARS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.params = dict(
            targets=targets,
            target_fields=target_fields,
            max_targets=max_targets,
            sample_size=sample_size,
            positive_fraction=positive_fraction,
            keep_fraction=keep_fraction,
            encoder=encoder,
            embed_batch_size=embed_batch_size,
            validation_fraction=validation_fraction,
            seed=seed,
            max_chars=max_chars,
        )
        self.hyper = dict(lr=lr, dim=dim, ws=ws, minCount=min_count, epoch=epoch, wordNgrams=word_ngrams, bucket=bucket)

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        from operators.models import check_spec

        op = cls(**params)
        check_spec(op.params["encoder"])

    def model(self) -> FastTextModel:
        """The trained classifier, loaded once per worker process (tasks deserialize fresh operators)."""
        return self.shared("model", FastTextModel.from_bytes)

    def score(self, texts: list[str]) -> np.ndarray:
        """fastText P(positive) of each text's first ``max_chars`` characters."""
        cap = self.params["max_chars"]
        return self.model().proba(texts if cap is None else [t[:cap] for t in texts], POS)

    # ------------------------------------------------------------------ pass 1
    def sample(self, ds) -> pa.Table:
        """The ``sample_size`` live documents with the smallest (seed, id) hashes.

        Columns id, text (its first ``max_chars`` characters) and domain.
        """
        k, seed, cap = self.params["sample_size"], self.params["seed"], self.params["max_chars"]

        def smallest(batch: pa.Table) -> pa.Table:
            idx = np.flatnonzero(self.active(batch))
            h = hash64(batch.column("id").take(pa.array(idx)).to_pylist(), seed)
            return pa.table({"h": np.sort(h)[:k]})

        parts = tables(ds.map_batches(smallest, batch_format="pyarrow"))
        hashes = [t.column("h").to_numpy() for t in parts if t.num_rows]
        allh = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        if allh.size == 0:
            return pa.table({c: pa.array([], pa.string()) for c in ("id", "text", "domain")})
        bound = np.partition(allh, min(k, allh.size) - 1)[min(k, allh.size) - 1]

        def pick(batch: pa.Table) -> pa.Table:
            idx = np.flatnonzero(self.active(batch))
            ids = batch.column("id").take(pa.array(idx))
            keep = idx[hash64(ids.to_pylist(), seed) <= bound]
            out = batch.select(["id", "text", "domain"]).take(pa.array(keep, pa.int64()))
            if cap is None:
                return out
            return out.set_column(1, "text", pc.utf8_slice_codeunits(out.column("text"), start=0, stop=cap))

        parts = [t for t in tables(ds.map_batches(pick, batch_format="pyarrow")) if t.num_rows]
        table = pa.concat_tables(parts)
        order = np.argsort(hash64(table.column("id").to_pylist(), seed), kind="stable")
        return table.take(pa.array(order))

    @classmethod
    def prepare(cls, ds, params: dict[str, Any], ctx: StageContext) -> Prepared:
        op = cls(stage="prepare", **params)
        p = op.params
        t0 = time.perf_counter()
        targets = load_targets(p["targets"], p["target_fields"], p["max_targets"])
        sample = op.sample(ds)
        n = sample.num_rows
        if n < 10:
            raise ValueError(f"betr: only {n} live documents to sample; BETR needs at least 10")
        texts = [t or "" for t in sample.column("text").to_pylist()]
        ids = sample.column("id").to_pylist()
        domains = [str(d) for d in sample.column("domain").to_pylist()]
        t_sample = time.perf_counter() - t0

        t1 = time.perf_counter()
        if ctx.gpus:
            import ray

            embed_task = ray.remote(num_gpus=1)(_embed_all)
            emb_t, emb_d = ray.get(
                [embed_task.remote(p["encoder"], x, p["embed_batch_size"]) for x in (targets, texts)]
            )
        else:
            from operators.models import load_sentence_transformer

            encoder = load_sentence_transformer(p["encoder"])
            emb_t, emb_d = (embed(encoder, x, p["embed_batch_size"]) for x in (targets, texts))
        t_embed = time.perf_counter() - t1

        # label: top positive_fraction by best rank (ties broken by the sample hash order)
        scores = rank_scores(emb_t, emb_d)
        n_pos = max(1, round(p["positive_fraction"] * n))
        order = np.lexsort((np.arange(n), -scores))
        positive = np.zeros(n, dtype=bool)
        positive[order[:n_pos]] = True
        # majority class downsampled (deterministically: the sample is already in hash order)
        neg = np.flatnonzero(~positive)[:n_pos] if n_pos < n - n_pos else np.flatnonzero(~positive)
        pos = np.flatnonzero(positive)
        if pos.size > neg.size:
            pos = pos[: neg.size]
        labelled = np.sort(np.concatenate([pos, neg]))
        hv = hash64([f"val:{ids[i]}" for i in labelled], p["seed"]).astype(np.float64) / 2.0**64
        val = labelled[hv < p["validation_fraction"]]
        train = labelled[hv >= p["validation_fraction"]]
        if not positive[train].any() or positive[train].all():
            train, val = labelled, labelled[:0]
        t2 = time.perf_counter()
        model = train_fasttext(
            [texts[i] for i in train], [POS if positive[i] else NEG for i in train], seed=p["seed"], **op.hyper
        )
        accuracy = None
        if val.size:
            pred = model.proba([texts[i] for i in val], POS) >= 0.5
            accuracy = round(float((pred == positive[val]).mean()), 4)
        data = model.to_bytes()
        ref = share(ds, data)
        t_train = time.perf_counter() - t2

        # pass 2: fastText scores of every live document -> token-weighted cutoff
        t3 = time.perf_counter()
        scorer = cls(stage="prepare", **params, _shared={"model": ref})

        def scored(batch: pa.Table) -> pa.Table:
            idx = np.flatnonzero(scorer.active(batch))
            texts_b = text_heads(batch.column("text").take(pa.array(idx)), p["max_chars"])
            return pa.table({"s": scorer.score(texts_b), "w": token_weights(batch, idx)})

        parts = [t for t in tables(ds.map_batches(scored, batch_format="pyarrow")) if t.num_rows]
        s = np.concatenate([t.column("s").to_numpy() for t in parts])
        w = np.concatenate([t.column("w").to_numpy() for t in parts]).astype(np.float64)
        by = np.argsort(-s, kind="stable")
        cum = np.cumsum(w[by])
        total = float(cum[-1]) if cum.size else 0.0
        goal = p["keep_fraction"] * total
        k = min(int(np.searchsorted(cum, goal, side="left")), s.size - 1)
        cutoff = float(s[by[k]])
        kept = s >= cutoff
        t_score = time.perf_counter() - t3
        report = {
            "targets": len(targets),
            "sample_size": n,
            "positives": int(pos.size),
            "sample_by_domain": dict(sorted(Counter(domains).items())),
            "positives_by_domain": dict(sorted(Counter(domains[i] for i in np.flatnonzero(positive)).items())),
            "negatives": int(neg.size),
            "train": int(train.size),
            "validation": int(val.size),
            "validation_accuracy": accuracy,
            "cutoff": cutoff,
            "keep_fraction": p["keep_fraction"],
            "docs_scored": int(s.size),
            "docs_kept": int(kept.sum()),
            "tokens_total": int(total),
            "tokens_kept": int(w[kept].sum()),
            "token_unit": "n_tokens where present, else whitespace tokens",
            "fasttext": op.hyper,
            "model_bytes": len(data),
            "seconds": {
                "sample": round(t_sample, 3),
                "embed": round(t_embed, 3),
                "train": round(t_train, 3),
                "score": round(t_score, 3),
            },
        }
        logger.info("betr: %s", {k: v for k, v in report.items() if k != "fasttext"})
        return Prepared({"model": ref, "cutoff": cutoff}, report)

    # ------------------------------------------------------------------ pass 2
    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        cutoff = self.shared("cutoff")
        idx = np.flatnonzero(active)
        s = self.score(text_heads(batch.column("text").take(pa.array(idx)), self.params["max_chars"]))
        values: list[float | None] = [None] * batch.num_rows
        for k, i in enumerate(idx.tolist()):
            values[i] = float(s[k])
        batch = with_column(batch, "betr", pa.array(values, pa.float64()))
        low = idx[s < cutoff]
        if not low.size:
            return batch
        return mark_removed(batch, low, ["betr_below_cutoff"] * low.size, self.stage)
