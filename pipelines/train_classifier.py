"""`sluice train-classifier`: build a quality classifier (fastText or embedding head) from positive and negative files.

Run: ``sluice train-classifier --positive hq.jsonl --negative crawl.jsonl -o models/quality.bin``
(``--kind embedding -o models/quality.json`` for sentence embeddings + logistic regression).
"""

from __future__ import annotations

import json
from enum import Enum

import typer


class Kind(str, Enum):
    fasttext = "fasttext"
    embedding = "embedding"


def train_classifier_cmd(
    positive: list[str] = typer.Option(..., "--positive", help="High-quality documents; repeat for several files."),
    negative: list[str] = typer.Option(..., "--negative", help="Ordinary (crawl) documents; repeat for several files."),
    out: str = typer.Option(..., "-o", "--out", help="Model file to write (.bin for fastText, .json for embedding)."),
    kind: Kind = typer.Option(Kind.fasttext, "--kind", help="fasttext (DCLM recipe) or embedding (MiniLM + logistic)."),
    text_field: str = typer.Option("text", "--text-field", help="JSON field of the text in .jsonl files."),
    encoder: str = typer.Option("packaged:minilm-l6-v2", "--encoder", help="Sentence-transformers model (embedding)."),
    epoch: int | None = typer.Option(None, "--epoch", help="fastText epochs (default 5)."),
    bucket: int | None = typer.Option(
        None, "--bucket", help="fastText n-gram hash buckets (default 2,000,000; the .bin is ~bucket x dim x 4 bytes)."
    ),
    validation_fraction: float = typer.Option(0.1, "--validation-fraction", help="Held out to report accuracy."),
    seed: int = typer.Option(0, "--seed", help="Fixes the held-out set and the fastText run."),
) -> None:
    """Train a quality classifier. Files ending in .jsonl/.json (optionally .gz/.zst) are JSON lines with a
    text field; any other file is plain text with one document per line."""
    from operators.classifier import train_classifier

    hyper = {k: v for k, v in (("epoch", epoch), ("bucket", bucket)) if v is not None and kind is Kind.fasttext}
    try:
        report = train_classifier(
            positive,
            negative,
            out,
            kind.value,
            text_field=text_field,
            encoder=encoder,
            validation_fraction=validation_fraction,
            seed=seed,
            **hyper,
        )
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(report, indent=2, default=str))
    op = f"{{op: quality_classifier, kind: {kind.value}, model: {out}, top_fraction: 0.1}}"
    typer.echo(f"Use it in a recipe: - {op}")
