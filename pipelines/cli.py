"""The `sluice` command line: curate a recipe, inspect a run with SQL, build the demo corpus."""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Sluice: curate LLM pretraining data on Ray Data and inspect every shard with SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _data_mismatch(exc: BaseException) -> str | None:
    """The message of the :class:`~operators.base.DataMismatch` behind ``exc``, if any: raised in process, or
    in a Ray task (Ray Data's UserCodeException keeps only the task's traceback text, where it is read from)."""
    import re

    from operators.base import DataMismatch

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DataMismatch):
            return str(exc)
        if m := re.search(r"operators\.base\.DataMismatch: (.*?)(?:\n\n|$)", str(exc), re.S):
            return m.group(1)
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # a RayTaskError carries the task's own exception
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


@app.command()
def curate(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see pipelines/recipes/)."),
    out: str | None = typer.Option(None, "-o", "--out", help="Run directory; default: the recipe's output.dir."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Start over: delete what Sluice wrote in the run directory (nothing else)."
    ),
    engine: str = typer.Option(
        None,
        "--engine",
        help="ray, local (in this process, no Ray) or auto (the default, or $SLUICE_ENGINE): in process when the "
        "inputs take at most 512 MB / CPUs (256 MB on 2 CPUs; compressed files count 4x) and no Ray cluster is "
        "named ($RAY_ADDRESS) or "
        "left running by `ray start`.",
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log more."),
) -> None:
    """Run RECIPE into Parquet shards: on Ray Data (local, or the cluster at $RAY_ADDRESS), or in this process
    when the inputs are small."""
    from pipelines.local import requested_engine
    from pipelines.recipe import RecipeError, load_recipe
    from pipelines.runner import ConservationError, InputError, run
    from storage.run import RunLockedError, UnsafePathError

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pipelines").setLevel(logging.INFO)
    try:
        requested_engine(engine)
    except ValueError as e:
        err.print(f"[red]invalid option[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    try:
        r = load_recipe(recipe)
    except RecipeError as e:
        err.print(f"[red]invalid recipe[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    try:
        manifest = run(r, out, fresh=fresh, recipe_text=recipe.read_text(), engine=engine)
    except RecipeError as e:  # found in the data: e.g. an input field that clashes with a Sluice column
        err.print(f"[red]invalid recipe[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except ConservationError as e:
        err.print(f"[red]conservation check failed:[/red] {e}")
        raise typer.Exit(1) from None
    except (UnsafePathError, RunLockedError) as e:
        err.print(f"[red]refused:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except InputError as e:
        err.print(f"[red]input error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    except OSError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    except Exception as e:
        mismatch = _data_mismatch(e)
        if mismatch is None:
            raise
        err.print(f"[red]the data does not fit the recipe:[/red] {mismatch}", highlight=False)
        raise typer.Exit(2) from None
    out_dir = out or r.output.dir
    print_funnel(manifest)
    c = manifest["conservation"]
    console.print(
        f"\nKept {c['kept']:,} of {c['read']:,} documents{_plus_synthetic(c)} in {len(manifest['shards'])} shard(s) "
        "under "
        f"[bold]{out_dir}/shards[/bold]; {c['removed']:,} removed rows, each with its reason, under {out_dir}/removed."
    )
    print("Try:")
    print(f'  sluice inspect {out_dir} "SELECT stage, reason, count(*) AS n FROM removed GROUP BY ALL ORDER BY n DESC"')
    print(f"  sluice report {out_dir}        # one HTML page: funnel, domains, scores, dedup, removed samples")


def _plus_synthetic(c: dict) -> str:
    n = c.get("synthetic", 0)
    return f" (+{n:,} synthetic rows added)" if n else ""


def print_funnel(manifest: dict) -> None:
    """Print the per-stage funnel: rows in and out, removed by reason, seconds."""
    t = Table(title="Funnel", title_justify="left")
    for col, just in (
        ("stage", "left"),
        ("op", "left"),
        ("in", "right"),
        ("out", "right"),
        ("removed (top reasons)", "left"),
        ("busy s", "right"),
    ):
        t.add_column(col, justify=just)
    for s in manifest["stages"]:
        reasons = sorted(s["removed"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {v:,}" for k, v in reasons[:3]) + (" …" if len(reasons) > 3 else "")
        secs = "" if s["seconds"] is None else f"{s['seconds']:.2f}"
        t.add_row(s["stage"], s["op"], f"{s['rows_in']:,}", f"{s['rows_out']:,}", shown, secs)
    console.print(t)
    doms = Table(title="Kept by domain", title_justify="left")
    for col in ("domain", "docs", "chars", "tokens"):
        doms.add_column(col, justify="left" if col == "domain" else "right")
    for d in manifest["domains"]:
        doms.add_row(
            d["domain"], f"{d['docs']:,}", f"{d['chars']:,}", "" if d["tokens"] is None else f"{d['tokens']:,}"
        )
    console.print(doms)


def _print_result(cursor, fmt: Format) -> None:
    cols = [d[0] for d in cursor.description] if cursor.description else []
    rows = cursor.fetchall()
    if fmt is Format.json:
        sys.stdout.write(json.dumps([dict(zip(cols, r)) for r in rows], default=str) + "\n")
    elif fmt is Format.csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    else:
        t = Table(show_lines=False)
        for c in cols:
            t.add_column(c, overflow="fold", max_width=80)
        for r in rows:
            t.add_row(*["NULL" if v is None else _short(v) for v in r])
        console.print(t)
        console.print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", style="dim")


def _short(v: object, limit: int = 300) -> str:
    s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return s if len(s) <= limit else s[:limit] + "…"


@app.command()
def inspect(
    out: str = typer.Argument(..., help="A run directory written by `sluice curate`."),
    sql: str | None = typer.Argument(None, help="SQL over the views docs, removed, shards, stages; omit for a prompt."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
) -> None:
    """Query a run with DuckDB SQL. Views: docs (kept), removed, shards, stages.

    The SQL is full DuckDB SQL run with your permissions: it can read and write files
    (COPY … TO, read_csv …). To run untrusted text, use `sluice select --where`, which
    accepts one read-only expression.
    """
    import duckdb

    from storage.views import connect

    if not Path(out).is_dir() and "://" not in out:
        err.print(f"[red]error:[/red] {out!r} is not a run directory (expected a directory with manifest.json)")
        raise typer.Exit(1)
    try:
        con = connect(out)
    except (OSError, ValueError, duckdb.Error) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    queries = [sql] if sql is not None else None
    if queries is None:
        console.print("Views: docs, removed, shards, stages. End a query with ';' or a blank line; .quit to leave.")
    while True:
        if queries is not None:
            if not queries:
                return
            q = queries.pop()
        else:
            q = _prompt()
            if q is None:
                return
        try:
            _print_result(con.execute(q), fmt)
        except duckdb.Error as e:
            err.print(f"[red]{type(e).__name__}:[/red] {e}", highlight=False)
            if sql is not None:
                raise typer.Exit(1) from None


def _prompt() -> str | None:
    lines: list[str] = []
    while True:
        try:
            line = input("sluice> " if not lines else "   ...> ")
        except EOFError:
            return None
        if not lines and line.strip() in (".quit", ".exit", "quit", "exit"):
            return None
        lines.append(line)
        text = "\n".join(lines).strip()
        if text.endswith(";") or (not line.strip() and text):
            return text.rstrip(";")


@app.command()
def report(
    out: str = typer.Argument(..., help="A run directory written by `sluice curate` (or `sluice select`)."),
    dest: str | None = typer.Option(None, "-o", "--output", help="HTML file to write; default: OUT/report.html."),
) -> None:
    """Write one self-contained HTML report of a run: funnel, domains, scores, dedup, removed samples."""
    from pipelines.report import write_report
    from storage.run import RunLockedError, UnsafePathError

    try:
        path = write_report(out, dest)
    except (UnsafePathError, RunLockedError) as e:
        err.print(f"[red]refused:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as e:  # a missing manifest is a FileNotFoundError
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    print(f"Report: {path}")


@app.command("calibrate")
def calibrate_cmd(
    recipe: Path = typer.Argument(..., help="The recipe whose filter stages to calibrate."),
    reference: list[str] = typer.Option(
        ..., "--reference", help="Trusted documents, FILE[=DOMAIN] in the eval-set format; repeat per domain."
    ),
    keep: float = typer.Option(0.99, "--keep", help="Share of each domain's reference every filter stage keeps."),
    sample: int = typer.Option(2000, "--sample", help="Documents per domain read from reference and corpus."),
    out: Path = typer.Option(..., "-o", "--out", help="Where to write the calibrated recipe (YAML)."),
) -> None:
    """Relax the recipe's web-text filter thresholds per domain until they keep KEEP of a trusted reference."""
    from pipelines.calibrate import calibrate
    from pipelines.recipe import RecipeError, load_recipe
    from storage.evalsets import EvalSetError

    if out.exists() and (out.resolve() == recipe.resolve() or not out.read_text().startswith("# Calibrated by")):
        err.print(f"[red]refused:[/red] {out} exists and is not a recipe `sluice calibrate` wrote; choose another -o")
        raise typer.Exit(2)
    try:
        text, record = calibrate(load_recipe(recipe), recipe.read_text(), reference, keep, sample)
    except (RecipeError, EvalSetError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    out.write_text(text)
    t = Table(title=f"Calibration (keep {keep:.0%} of the reference)", title_justify="left")
    for col in ("stage", "domain", "rule", "before", "after", "ref removed", "corpus removed"):
        t.add_column(col)
    for r in record["rules"]:
        pct = lambda a, b: "" if a is None else f"{a:.1%} → {b:.1%}"  # noqa: E731
        t.add_row(
            r["stage"], r["domain"], r["param"], str(r["before"]), str(r["after"]),
            pct(r["reference_removed_before"], r["reference_removed_after"]),
            pct(r["corpus_removed_before"], r["corpus_removed_after"]),
        )  # fmt: skip
    console.print(t)
    print(f"Calibrated recipe: {out}")


@app.command("ablate")
def ablate_cmd(
    spec: Path = typer.Argument(..., help="Ablation spec (YAML): variants, baseline, seeds, eval sets, model, budget."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory for runs, results.json and results.md."),
) -> None:
    """Train a proxy model per (variant, seed) at equal tokens and compare eval loss against the baseline."""
    from pipelines.ablate import AblationError, ablate, load_spec, table_md

    try:
        s = load_spec(spec)
    except AblationError as e:
        err.print(f"[red]invalid spec[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    summary = ablate(s, out)
    print(table_md(summary))
    print(f"Results: {out / 'results.json'}")


@app.command("mixsearch")
def mixsearch_cmd(
    run: str = typer.Argument(..., help="A curated, tokenized run."),
    evals: list[str] = typer.Option(..., "--eval", help="Eval set FILE[=DOMAIN] the proxies are scored on; repeat."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory for the proxies and mixsearch.json."),
    mixtures: int = typer.Option(16, "--mixtures", help="Mixtures to sample and train a proxy on."),
    steps: int = typer.Option(200, "--steps", help="Steps per proxy."),
    global_batch: int = typer.Option(16, "--global-batch"),
    seq_len: int = typer.Option(128, "--seq-len"),
    epoch_cap: float | None = typer.Option(
        None, "--epoch-cap", help="At most this many epochs of any domain in the run the mixture is for."
    ),
    target_steps: int | None = typer.Option(
        None, "--target-steps", help="Steps of the run the mixture is for (epoch caps count them; default --steps)."
    ),
    compact_vocab: int | None = typer.Option(4096, "--compact-vocab", help="Proxy vocabulary (most frequent tokens)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fit eval loss against mixture weights over short proxy runs (RegMix / Data Mixing Laws); print the best."""
    from pipelines.mixsearch import mixsearch_run

    try:
        rec = mixsearch_run(
            run, evals, out, mixtures=mixtures, steps=steps, global_batch=global_batch, seq_len=seq_len,
            epoch_cap=epoch_cap, target_steps=target_steps, seed=seed, compact_vocab=compact_vocab,
        )  # fmt: skip
    except (ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"held-out R²: {rec['held_out_r2']} (using {rec['fit']})")
    console.print(
        f"predicted {rec['predicted_loss']:.4f}, validated {rec['validated_loss']:.4f} "
        f"(best sampled {rec['best_sampled_loss']:.4f}): using the "
        + ("proposal" if rec["chosen"] == "proposal" else "best sampled mixture")
    )
    print(f"sluice serve {run} --mixer static {rec['weights_flag']}")


@app.command("export")
def export_cmd(
    run: str = typer.Argument(..., help="A curated, tokenized run."),
    out: str = typer.Option(..., "-o", "--out", help="Directory for the exported files (outside the run)."),
    fmt: str = typer.Option(
        "megatron", "--format", help="megatron (.bin/.idx per domain and split) or mds (MosaicML Streaming)."
    ),
    shard_mb: float | None = typer.Option(None, "--shard-mb", help="mds: shard size limit in MiB (default 64)."),
    with_text: bool = typer.Option(False, "--with-text", help="mds: add each document's `text` column."),
    compression: str | None = typer.Option(None, "--compression", help="mds: zstd or zstd:<level> (default: none)."),
) -> None:
    """Write a tokenized run in a format trainers read (Megatron-LM indexed datasets, MosaicML MDS) with lineage."""
    from storage.export import export
    from storage.run import UnsafePathError

    try:
        rec = export(run, out, fmt, shard_mb=shard_mb, with_text=with_text, compression=compression)
    except UnsafePathError as e:
        err.print(f"[red]refused:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except (ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    for f in rec["files"]:
        if "prefix" in f:
            print(f"{out}/{f['prefix']}.bin/.idx: {f['documents']:,} documents, {f['tokens']:,} tokens ({f['dtype']})")
        else:
            n = len(f["shards"])
            print(
                f"{out}/{f['dir']}: {f['documents']:,} documents, {f['tokens']:,} tokens "
                f"(tokens {f['dtype']}), {n} shard{'' if n == 1 else 's'}"
            )


@app.command("demo-data")
def demo_data(
    dest: Path = typer.Argument(Path("data/demo"), help="Directory to write the demo corpus into."),
    max_code: int = typer.Option(400, help="Standard-library source files to take as `code`."),
) -> None:
    """Assemble the offline demo corpus (stdlib source, package docs, licenses, junk)."""
    from pipelines.demo_data import build

    counts = build(dest, max_code=max_code)
    console.print(f"demo corpus in {dest}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


def _register_commands() -> None:
    """Commands that live next to the code they drive."""
    from mixers.server.cli import serve
    from pipelines.select import select_cmd
    from pipelines.train_classifier import train_classifier_cmd

    app.command("serve")(serve)
    app.command("select")(select_cmd)
    app.command("train-classifier")(train_classifier_cmd)


_register_commands()


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
