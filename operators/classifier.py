"""Quality classifiers: fastText (DCLM recipe) or sentence embeddings + a logistic head (FineWeb-Edu style)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator, Field

from operators.base import AtLeastOne, Operator, Probability, check_params, mark_removed, register
from operators.models import text_heads
from operators.percentile import band_stage
from storage.run import atomic_path
from storage.schema import with_column

logger = logging.getLogger(__name__)

HQ, CC = "__label__hq", "__label__cc"
#: the embedding head's file format (JSON): {"format", "version", "encoder", "coef", "intercept", "metrics"}
HEAD_FORMAT = "sluice-embedding-head"
#: characters of a document an embedding model sees (MiniLM truncates at 256 word pieces anyway)
EMBED_CHARS = 4096
#: default characters of a document the quality classifier scores (``max_chars``)
SCORE_CHARS = 100_000


# ---------------------------------------------------------------- reading training files
def read_docs(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of one training file.

    ``*.jsonl``, ``*.json``, ``*.jsonl.gz`` and ``*.jsonl.zst`` are JSON lines whose
    ``text_field`` holds the document; any other file is plain text with one document per
    line. Empty documents are skipped.
    """
    p = Path(path)
    name = p.name.lower()
    raw = p.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
        name = name[:-3]
    elif name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        name = name[:-4]
    lines = raw.decode("utf-8", "replace").splitlines()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        docs = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                raise ValueError(f"{path}:{n}: expected a JSON object with a string field {text_field!r}")
            docs.append(rec[text_field])
    else:
        docs = lines
    return [d for d in docs if d.strip()]


def one_line(text: str) -> str:
    """fastText input: the DCLM preprocessing, lines joined with spaces."""
    return " ".join(text.strip().splitlines())


def held_out(text: str, seed: int, fraction: float) -> bool:
    """Deterministic validation membership from (seed, text)."""
    h = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


# ---------------------------------------------------------------- fastText
class FastTextModel:
    """A supervised fastText model; ``proba`` returns the probability of one label per text.

    fasttext-wheel's ``predict`` breaks under numpy 2, so this calls the binding directly.
    """

    def __init__(self, path: str | Path) -> None:
        import fasttext.FastText

        self.model = fasttext.FastText._FastText(model_path=str(path))  # no load_model warning
        self.labels = list(self.model.get_labels())

    @classmethod
    def from_bytes(cls, data: bytes) -> FastTextModel:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "model.bin"
            p.write_bytes(data)
            return cls(p)

    def to_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "model.bin"
            self.model.save_model(str(p))
            return p.read_bytes()

    def proba(self, texts: list[str], label: str) -> np.ndarray:
        if label not in self.labels:
            raise ValueError(f"fastText model has labels {self.labels}, not {label!r}")
        f = self.model.f
        out = np.empty(len(texts), dtype=np.float64)
        for i, t in enumerate(texts):
            pairs = f.predict(one_line(t) + "\n", -1, 0.0, "replace")
            out[i] = next((p for p, lab in pairs if lab == label), 0.0)
        return np.clip(out, 0.0, 1.0)


def train_fasttext(texts: list[str], labels: list[str], *, seed: int = 0, **hyper: Any) -> FastTextModel:
    """Train a supervised fastText model (labels like ``__label__hq``) on one line per text.

    ``hyper`` are fastText's own arguments (``lr``, ``dim``, ``ws``, ``epoch``, ``minCount``,
    ``wordNgrams``, ``bucket``, ``thread``…). ``thread`` defaults to 1 so that a seed gives the
    same model every time.
    """
    import fasttext

    if len(set(labels)) < 2:
        raise ValueError(f"fastText needs two classes to train, got {sorted(set(labels))}")
    hyper = {"thread": 1, "verbose": 0, **hyper}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.txt"
        with open(path, "w", encoding="utf-8") as f:
            for t, lab in zip(texts, labels):
                f.write(f"{lab} {one_line(t)}\n")
        ft = fasttext.train_supervised(input=str(path), seed=seed, **hyper)
        out = Path(d) / "model.bin"
        ft.save_model(str(out))
        return FastTextModel(out)


# ---------------------------------------------------------------- embedding head
def embed(encoder, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalized sentence embeddings (float32) of ``texts`` with a loaded SentenceTransformer."""
    return encoder.encode(
        [t[:EMBED_CHARS] for t in texts],
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32)


def load_head(path: str | Path) -> dict[str, Any]:
    head = json.loads(Path(path).read_text())
    if not isinstance(head, dict) or head.get("format") != HEAD_FORMAT:
        raise ValueError(
            f"{path} is not an embedding classifier head (format {HEAD_FORMAT!r}); train one with "
            "`sluice train-classifier --kind embedding`"
        )
    return head


# ---------------------------------------------------------------- training
def train_classifier(
    positive: list[str],
    negative: list[str],
    out: str,
    kind: Literal["fasttext", "embedding"] = "fasttext",
    *,
    text_field: str = "text",
    encoder: str = "packaged:minilm-l6-v2",
    validation_fraction: float = 0.1,
    seed: int = 0,
    **hyper: Any,
) -> dict[str, Any]:
    """Train a quality classifier from positive and negative files; write it to ``out``; return a report.

    Args:
        positive: files of high-quality documents (see :func:`read_docs` for the formats:
            JSONL with ``text_field``, or plain text with one document per line).
        negative: files of ordinary (crawl) documents.
        out: the model file: a fastText ``.bin``, or a JSON head for ``kind="embedding"``.
        kind: ``fasttext`` (DCLM: ``__label__hq``/``__label__cc``, wordNgrams=2, otherwise
            fastText's defaults) or ``embedding`` (sentence embeddings + logistic regression).
        text_field: the JSON field holding the text in JSONL files.
        encoder: the sentence-transformers model for ``kind="embedding"``.
        validation_fraction: documents held out (by a hash of the text) to measure accuracy.
        seed: fixes the held-out set and the training run.
        hyper: fastText arguments (e.g. ``epoch``, ``lr``, ``bucket``) or, for ``embedding``,
            ``C`` (inverse L2 strength of the logistic regression) and ``batch_size``.
    """
    if kind not in ("fasttext", "embedding"):
        raise ValueError(f"train_classifier: kind must be 'fasttext' or 'embedding', got {kind!r}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"train_classifier: validation_fraction must be in [0, 1), got {validation_fraction}")
    pos = [d for p in positive for d in read_docs(p, text_field)]
    neg = [d for p in negative for d in read_docs(p, text_field)]
    if not pos or not neg:
        raise ValueError(
            f"train_classifier: need documents on both sides, got {len(pos)} positive, {len(neg)} negative"
        )
    texts, y = [*pos, *neg], np.array([1] * len(pos) + [0] * len(neg))
    val = np.array([held_out(t, seed, validation_fraction) for t in texts])
    if val.all():
        val[:] = False
    tr = ~val
    report: dict[str, Any] = {"kind": kind, "positive": len(pos), "negative": len(neg), "train": int(tr.sum())}
    if kind == "fasttext":
        hyper = {"wordNgrams": 2, **hyper}
        train_texts = [t for t, k in zip(texts, tr) if k]
        model = train_fasttext(train_texts, [HQ if v else CC for v, k in zip(y, tr) if k], seed=seed, **hyper)
        report["hyper"] = hyper

        def score(idx: np.ndarray) -> np.ndarray:
            return model.proba([texts[i] for i in idx], HQ)

    else:
        from sklearn.linear_model import LogisticRegression

        from operators.models import load_sentence_transformer

        x = embed(load_sentence_transformer(encoder), texts, hyper.get("batch_size", 64))
        fit = LogisticRegression(C=hyper.get("C", 1.0), max_iter=1000, random_state=seed).fit(x[tr], y[tr])
        coef, intercept = fit.coef_[0].astype(np.float64), float(fit.intercept_[0])

        def score(idx: np.ndarray) -> np.ndarray:
            return 1 / (1 + np.exp(-(x[idx] @ coef + intercept)))

    if val.any():
        idx = np.flatnonzero(val)
        pred = score(idx) >= 0.5
        report.update(validation=int(val.sum()), validation_accuracy=float((pred == (y[idx] == 1)).mean()))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if kind == "fasttext":
            model.model.save_model(tmp)
        else:
            head = {"format": HEAD_FORMAT, "version": 1, "encoder": encoder, "coef": coef.tolist()}
            Path(tmp).write_text(json.dumps({**head, "intercept": intercept, "metrics": report}))
    report["out"] = str(out)
    logger.info("trained %s classifier: %s", kind, report)
    return report


# ---------------------------------------------------------------- the operator
def _model_file(model: str) -> str:
    if not Path(model).expanduser().is_file():
        hint = "sluice train-classifier --positive FILES --negative FILES -o " + model
        raise ValueError(f"model file {model!r} does not exist; train one with `{hint}`")
    return model


def _one_selection(threshold: float | None, top_fraction: float | None) -> None:
    if threshold is not None and top_fraction is not None:
        raise ValueError("quality_classifier: at most one of `threshold` and `top_fraction` may be set")


@register("quality_classifier")
class QualityClassifier(Operator):
    """Write ``quality`` = P(high quality) with a trained classifier; optionally select on it.

    ``kind: fasttext`` loads a fastText ``.bin`` (for instance one from ``sluice
    train-classifier`` or DCLM's released ``__label__hq`` model) and is cheap enough to run in
    plain CPU tasks. ``kind: embedding`` embeds documents with a sentence-transformers model
    and applies a logistic head saved as JSON; the stage expands into the equivalent
    ``embedding_classifier`` op, which runs in an actor pool on a GPU when there is one.

    Long documents are scored on a prefix: a document is cut to its first ``max_chars``
    characters (in Arrow, before it becomes a Python string) before fastText sees it, and the
    embedding encoder reads at most ``EMBED_CHARS`` (4096) of those, so the work per document is
    bounded whatever its length; the stored text is not changed.

    Selection: ``threshold`` removes rows with ``quality`` below it (``quality_below_threshold``);
    ``top_fraction`` keeps the best fraction of the whole dataset by expanding into a
    ``percentile_filter`` stage named ``<name>_top`` (reason ``quality_below_band``).

    Args:
        kind: ``fasttext`` or ``embedding``.
        model: the fastText ``.bin``, or the embedding head's JSON file.
        label: the fastText label whose probability is ``quality``.
        encoder: sentence-transformers spec for ``embedding``; default: the one in the head file.
        threshold: remove rows with ``quality`` below this.
        top_fraction: keep this fraction of the dataset (DCLM keeps 0.1).
        batch_size: documents per embedding batch.
        max_chars: score only the first this many characters of a document; null: the whole
            document (fastText; the embedding encoder never reads more than ``EMBED_CHARS``).
    """

    adds = ("quality",)

    def __init__(
        self,
        *,
        kind: Literal["fasttext", "embedding"] = "fasttext",
        model: Annotated[str, AfterValidator(_model_file)],
        label: str = HQ,
        encoder: str | None = None,
        threshold: Probability | None = None,
        top_fraction: Annotated[float, Field(gt=0, lt=1)] | None = None,
        batch_size: AtLeastOne = 64,
        max_chars: AtLeastOne | None = SCORE_CHARS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _one_selection(threshold, top_fraction)
        if top_fraction is not None:
            raise ValueError(
                "quality_classifier: `top_fraction` is applied by a percentile_filter stage that recipes add "
                "automatically (Operator.expand); in Python, score without it and run PercentileFilter after it"
            )
        self.kind = kind
        self.label = label
        self.threshold = threshold
        self.batch_size = batch_size
        self.max_chars = max_chars
        path = Path(model).expanduser()
        if kind == "fasttext":
            self.ft = FastTextModel(path)
            if label not in self.ft.labels:
                raise ValueError(f"quality_classifier: {model} has labels {self.ft.labels}; set `label:` to one")
        else:
            from operators.models import load_sentence_transformer

            head = load_head(path)
            self.coef = np.asarray(head["coef"], dtype=np.float32)
            self.intercept = float(head["intercept"])
            self.encoder = load_sentence_transformer(encoder or head["encoder"])

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        from operators.models import check_spec

        check_params(cls, params)
        kind, model = params.get("kind", "fasttext"), params.get("model", "")
        _one_selection(params.get("threshold"), params.get("top_fraction"))
        if kind == "embedding":
            check_spec(params.get("encoder") or load_head(Path(model).expanduser())["encoder"])

    @classmethod
    def expand(cls, name: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        top = params.get("top_fraction")
        op = "embedding_classifier" if params.get("kind") == "embedding" else "quality_classifier"
        if (top is None and op == cls.op_name) or (top is not None and params.get("threshold") is not None):
            return None  # nothing to expand, or a conflict that validation reports on the stage as written
        score = {k: v for k, v in params.items() if k != "top_fraction"}
        stages = [{"op": op, "name": name, **score}]
        if top is not None:
            stages.append(
                band_stage(f"{name}_top", "quality", (100.0 * (1 - top), 100.0), False, params.get("domains"))
            )
        return stages

    def chars(self) -> int | None:
        """Characters of a document the model reads: ``max_chars`` (fastText), at most ``EMBED_CHARS`` (embedding)."""
        if self.kind == "fasttext":
            return self.max_chars
        return EMBED_CHARS if self.max_chars is None else min(self.max_chars, EMBED_CHARS)

    def predict(self, texts: list[str]) -> np.ndarray:
        """P(high quality) per text, from its first :meth:`chars` characters."""
        cap = self.chars()
        if cap is not None:
            texts = [t[:cap] for t in texts]
        if self.kind == "fasttext":
            return self.ft.proba(texts, self.label)
        x = embed(self.encoder, texts, self.batch_size)
        return 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept).astype(np.float64)))

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        idx = np.flatnonzero(active)
        q = self.predict(text_heads(batch.column("text").take(pa.array(idx)), self.chars()))
        values: list[float | None] = [None] * batch.num_rows
        for k, i in enumerate(idx.tolist()):
            values[i] = float(q[k])
        batch = with_column(batch, "quality", pa.array(values, pa.float64()))
        if self.threshold is None:
            return batch
        low = idx[q < self.threshold]
        if not low.size:
            return batch
        return mark_removed(batch, low, ["quality_below_threshold"] * low.size, self.stage)


@register("embedding_classifier")
class EmbeddingClassifier(QualityClassifier):
    """``quality_classifier`` with ``kind: embedding``, run as a model operator (GPU actor pool when present)."""

    uses_accelerator = True

    def __init__(self, *, kind: Literal["fasttext", "embedding"] = "embedding", **kwargs: Any) -> None:
        super().__init__(kind=kind, **kwargs)
