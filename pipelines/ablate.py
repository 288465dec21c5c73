"""``sluice ablate``: does a curated run, a mixer or a mixture make a better model at the same tokens?

Every (variant, seed) trains the reference tiny GPT (:mod:`mixers.tools.train`) from a mixer
server on its run for the same number of tokens (steps × global batch × sequence length), and is
scored on the same eval tokens (eval sets in the format of :mod:`storage.evalsets`, tokenized with
the baseline run's tokenizer; one compact vocabulary built from the baseline run is shared). The
result is the mean ± sd of the final eval loss per variant and eval domain, and every variant's
per-seed deltas against the baseline with a paired t-test. A finished (variant, seed) is not
trained again. Pairs run as Ray tasks (a GPU each where the cluster has GPUs, else one CPU).

Spec (YAML)::

    variants:
      raw: {run: out/raw}
      curated: {run: out/curated}
      curated_aioli: {run: out/curated, mixer: aioli}   # probe budget planned by budget.steps
      curated_static: {run: out/curated, mixer: static, weights: {web: 0.7, code: 0.3}}
      curated_capped: {run: out/curated, epoch_caps: {code: 2}}   # code served at most 2 epochs
    baseline: raw
    seeds: [0, 1, 2]
    eval: [evals/clean.jsonl]          # FILE or FILE=DOMAIN
    model: {n_layer: 2, n_head: 2, n_embd: 64, seq_len: 128, lr: 0.003, compact_vocab: 4096}
    budget: {steps: 300, global_batch: 16}

Run: ``sluice ablate spec.yaml -o out/ablation``
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storage.evalsets import EvalSetError, load_eval_set
from storage.manifest import read_manifest
from storage.run import write_text_atomic

logger = logging.getLogger(__name__)


class Variant(BaseModel):
    """One arm: a curated, tokenized run, served with a mixer (``stratified`` by default)."""

    model_config = ConfigDict(extra="forbid")
    run: str
    mixer: str = "stratified"
    params: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, float] | None = None
    target: str | None = None  # DGA: the domain whose held-out gradient steers the mixture
    epoch_caps: dict[str, float] | None = None  # domain -> the most epochs served (mixers.server.caps)


class ProxyModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_layer: Annotated[int, Field(ge=1)] = 2
    n_head: Annotated[int, Field(ge=1)] = 2
    n_embd: Annotated[int, Field(ge=8)] = 64
    seq_len: Annotated[int, Field(ge=8)] = 128
    lr: Annotated[float, Field(gt=0)] = 3e-3
    compact_vocab: Annotated[int, Field(ge=16)] | None = 4096


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: Annotated[int, Field(ge=1)] = 300
    global_batch: Annotated[int, Field(ge=1)] = 16


class AblationSpec(BaseModel):
    """What to compare, on what, for how long (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    variants: dict[str, Variant] = Field(min_length=2)
    baseline: str
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    eval: list[str] = Field(min_length=1)
    eval_tokenizer: str | None = None
    model: ProxyModel = Field(default_factory=ProxyModel)
    budget: Budget = Field(default_factory=Budget)

    @property
    def tokens(self) -> int:
        """Training tokens every (variant, seed) gets."""
        return self.budget.steps * self.budget.global_batch * self.model.seq_len


class AblationError(ValueError):
    """A spec that cannot run, with the field named."""


def load_spec(path: str | Path) -> AblationSpec:
    """Read and check a spec before anything trains: runs exist and are tokenized, eval sets read."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        spec = AblationSpec.model_validate(data)
    except (OSError, yaml.YAMLError) as e:
        raise AblationError(f"{path}: {e}") from None
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise AblationError(f"{path}:\n  " + "\n  ".join(lines)) from None
    if spec.baseline not in spec.variants:
        raise AblationError(f"baseline: {spec.baseline!r} is not one of the variants {sorted(spec.variants)}")
    for name, v in spec.variants.items():
        try:
            manifest = read_manifest(v.run)
        except FileNotFoundError:
            raise AblationError(f"variants.{name}.run: {v.run!r} is not a finished Sluice run (no manifest)") from None
        ops = {s.get("op") for s in (manifest.get("recipe") or {}).get("stages", [])}
        if "tokenize" not in ops:
            raise AblationError(f"variants.{name}.run: {v.run!r} has no tokens; end its recipe with {{op: tokenize}}")
        if "split" not in ops:
            raise AblationError(f"variants.{name}.run: {v.run!r} has no held-out split; add {{op: split}}")
        domains = {d["domain"] for d in manifest.get("domains") or []}
        if v.target is not None and domains and v.target not in domains:
            raise AblationError(f"variants.{name}.target: {v.target!r} is not a domain of {v.run!r} {sorted(domains)}")
        if v.epoch_caps:
            _check_caps(spec, name, v)
        if needs_held_out(v.mixer):
            from mixers.server.corpus import Corpus

            empty = sorted(d for d, n in Corpus(v.run).tokens("holdout").items() if n == 0)
            if empty:
                raise AblationError(
                    f"variants.{name}.run: {v.run!r} has no held-out documents in {', '.join(empty)}, and mixer "
                    f"{v.mixer!r} steers on held-out loss; raise the split stage's holdout_fraction"
                )
    for i, spec_path in enumerate(spec.eval):
        path, _, domain = spec_path.partition("=")
        try:
            load_eval_set(path, domain or None, limit=1)
        except EvalSetError as e:
            raise AblationError(f"eval[{i}]: {e}") from None
    return spec


def needs_held_out(mixer: str) -> bool:
    """Whether a mixer steers on held-out loss or gradients (``feedback_kinds``): every domain needs held-out data."""
    from mixers.algorithms import REGISTRY
    from mixers.algorithms.base import REPORT_ALIGNMENT, REPORT_EVAL

    cls = REGISTRY.get(mixer)
    return cls is not None and bool(cls.feedback_kinds & {REPORT_EVAL, REPORT_ALIGNMENT})


def _check_caps(spec: AblationSpec, name: str, v: Variant) -> None:
    """Refuse epoch caps that name unknown domains or cannot serve ``budget.steps`` (mixers.server.caps)."""
    from mixers.server.caps import check_budget, check_caps
    from mixers.server.corpus import Corpus

    where = f"variants.{name}.epoch_caps"
    corpus = Corpus(v.run)
    tokens = corpus.tokens("train")
    try:
        caps = check_caps(v.epoch_caps, corpus.domains, where)
        b = spec.budget
        check_budget(caps, corpus.domains, tokens, spec.model.seq_len, b.global_batch, b.steps, where, "budget.steps")
    except ValueError as e:
        raise AblationError(str(e)) from None


def _argv(spec: AblationSpec, v: Variant, seed: int, out: Path, vocab: Path | None, tokenizer: str) -> list[str]:
    m, b = spec.model, spec.budget
    argv = [
        "--serve", str(Path(v.run).resolve()), "--mixer", v.mixer,
        "--steps", str(b.steps), "--global-batch", str(b.global_batch),
        "--seq-len", str(m.seq_len), "--n-layer", str(m.n_layer), "--n-head", str(m.n_head), "--n-embd", str(m.n_embd),
        "--lr", str(m.lr), "--seed", str(seed), "--mixer-seed", str(seed), "--eval-every", str(max(1, b.steps // 5)),
        "--eval-tokenizer", tokenizer, "--out", str(out.resolve()), "--threads", "1",
    ]  # fmt: skip
    for s in spec.eval:
        path, sep, domain = s.partition("=")
        argv += ["--eval", str(Path(path).resolve()) + sep + domain]
    for k, val in v.params.items():
        argv += ["--param", f"{k}={json.dumps(val)}"]
    if v.weights is not None:
        argv += ["--param", f"weights={json.dumps(v.weights)}"]
    if v.target is not None:
        argv += ["--target", v.target]
    for d, e in sorted((v.epoch_caps or {}).items()):
        argv += ["--epoch-cap", f"{d}={e}"]
    if vocab is not None:
        argv += ["--vocab-map", str(vocab.resolve())]
    return argv


def run_digest(run: str) -> str:
    """A digest of a run's kept shards (path and sha256 of each, from its manifest): the same after a
    resume that changed nothing, different whenever the data a variant trains on changed."""
    shards = sorted((f["path"], f["sha256"]) for f in read_manifest(run).get("shards", []))
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def _train(argv: list[str]) -> dict[str, Any]:
    from mixers.tools.train import main

    result = main(argv)
    keys = ("final_eval_set_loss", "mean_eval_set_loss", "tokens", "tokens_by_domain", "history")
    return {k: result[k] for k in keys}


def ablate(spec: AblationSpec, out: str | Path) -> dict[str, Any]:
    """Train every (variant, seed) not already finished under ``out``; write and return the results."""
    import ray

    from mixers.server.corpus import Corpus
    from mixers.tools.train import VocabMap, run_tokenizer
    from pipelines.cluster import accelerators, init_ray

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = spec.eval_tokenizer or run_tokenizer(spec.variants[spec.baseline].run)
    vocab = None
    if spec.model.compact_vocab:  # one map, from the baseline run, for every variant
        vocab = out / "vocab.json"
        if not vocab.exists():
            kept = VocabMap.from_run(spec.variants[spec.baseline].run, spec.model.compact_vocab).kept
            write_text_atomic(vocab, json.dumps(kept))
    init_ray()
    gpus = accelerators()
    task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_train)
    pending, results = {}, {}
    for name, v in spec.variants.items():
        for seed in spec.seeds:
            argv = _argv(spec, v, seed, out / "runs" / name / f"seed{seed}", vocab, tokenizer)
            # the run's manifest (every shard's sha256) is part of the key: a run curated again is trained again
            key = hashlib.sha256(json.dumps([argv, run_digest(v.run)]).encode()).hexdigest()[:16]
            done = out / "runs" / name / f"seed{seed}" / "ablation.json"
            if done.exists() and json.loads(done.read_text()).get("key") == key:
                results[(name, seed)] = json.loads(done.read_text())["result"]
                logger.info("ablate: %s seed %d finished earlier, not retrained", name, seed)
                continue
            pending[(name, seed)] = (task.remote(argv), key, done)
    for (name, seed), (ref, key, done) in pending.items():
        res = ray.get(ref)
        write_text_atomic(done, json.dumps({"key": key, "result": res}))
        results[(name, seed)] = res
    train_tokens = {name: Corpus(v.run).tokens("train") for name, v in spec.variants.items()}
    summary = summarize(spec, results, train_tokens)
    write_text_atomic(out / "results.json", json.dumps(summary, indent=1))
    write_text_atomic(out / "results.md", table_md(summary))
    write_text_atomic(out / "results.html", page(summary, results, spec))
    return summary


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def summarize(spec: AblationSpec, results: dict, train_tokens: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Mean ± sd per variant and eval domain, per-seed deltas against the baseline, a paired t-test."""
    from scipy import stats

    domains = sorted({d for r in results.values() for d in r["final_eval_set_loss"]})
    out: dict[str, Any] = {"tokens_per_run": spec.tokens, "baseline": spec.baseline, "seeds": spec.seeds}
    out["variants"] = {}
    base = {s: results[(spec.baseline, s)] for s in spec.seeds}
    for name in spec.variants:
        runs = {s: results[(name, s)] for s in spec.seeds}
        row: dict[str, Any] = {"mean_eval_loss": {}, "delta_vs_baseline": {}, "epochs": {}}
        for d in [*domains, "mean"]:

            def loss(r: dict, d: str = d) -> float:
                return r["mean_eval_set_loss"] if d == "mean" else r["final_eval_set_loss"][d]

            m, sd = _mean_sd([loss(runs[s]) for s in spec.seeds])
            row["mean_eval_loss"][d] = {"mean": round(m, 5), "sd": round(sd, 5)}
            deltas = [loss(runs[s]) - loss(base[s]) for s in spec.seeds]
            entry: dict[str, Any] = {"per_seed": [round(x, 5) for x in deltas]}
            entry["mean"] = round(sum(deltas) / len(deltas), 5)
            if name != spec.baseline and len(deltas) > 1 and any(deltas):
                t = stats.ttest_rel([loss(runs[s]) for s in spec.seeds], [loss(base[s]) for s in spec.seeds])
                entry["paired_t"], entry["p_value"] = round(float(t.statistic), 4), round(float(t.pvalue), 5)
            row["delta_vs_baseline"][d] = entry
        served: dict[str, float] = {}
        for r in runs.values():
            for d, n in r["tokens_by_domain"].items():
                served[d] = served.get(d, 0) + n / len(runs)
        row["epochs"] = {d: round(n / max(1, train_tokens[name].get(d, 0)), 4) for d, n in sorted(served.items())}
        row["tokens"] = sorted({r["tokens"] for r in runs.values()})
        out["variants"][name] = row
    return out


def table_md(summary: dict[str, Any]) -> str:
    """The results as a Markdown table: mean ± sd of the final eval loss, Δ vs the baseline with per-seed deltas."""
    variants = summary["variants"]
    domains = list(next(iter(variants.values()))["mean_eval_loss"])
    lines = [
        f"Eval loss (nats/token) after {summary['tokens_per_run']:,} training tokens per run; "
        f"seeds {summary['seeds']}; baseline `{summary['baseline']}`.",
        "",
        "| variant | " + " | ".join(domains) + " | Δ mean vs baseline (per seed) | p |",
        "|---|" + "---:|" * len(domains) + "---|---:|",
    ]
    for name, row in variants.items():
        cells = [f"{row['mean_eval_loss'][d]['mean']:.4f} ± {row['mean_eval_loss'][d]['sd']:.4f}" for d in domains]
        delta = row["delta_vs_baseline"]["mean"]
        per = ", ".join(f"{x:+.4f}" for x in delta["per_seed"])
        p = delta.get("p_value", "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta['mean']:+.4f} ({per}) | {p} |")
    return "\n".join(lines) + "\n"


def weight_series(histories: list[list[dict[str, Any]]]) -> dict[str, tuple[list[int], list[float]]]:
    """Per domain, the mixture weight at each logged step, averaged over seeds; empty when the
    weights never moved (a static mixture has nothing to plot)."""
    rows = [[h for h in hist if h.get("weights")] for hist in histories]
    if not rows or not rows[0]:
        return {}
    n = min(len(r) for r in rows)
    steps = [h["step"] for h in rows[0][:n]]
    out: dict[str, tuple[list[int], list[float]]] = {}
    for d in rows[0][0]["weights"]:
        ys = [sum(r[i]["weights"][d] for r in rows) / len(rows) for i in range(n)]
        out[d] = (steps, ys)
    moved = any(max(ys) - min(ys) > 1e-6 for _, ys in out.values())
    return out if moved else {}


def page(summary: dict[str, Any], results: dict, spec: AblationSpec) -> str:
    """One self-contained HTML page in the style of ``sluice report``: the table, the eval-loss
    curves (mean over seeds) of every variant and the weights of every variant whose mixture moved."""
    from pipelines import charts
    from pipelines.report import CSS, note, table

    variants = summary["variants"]
    domains = list(next(iter(variants.values()))["mean_eval_loss"])
    rows = []
    for name, row in variants.items():
        delta = row["delta_vs_baseline"]["mean"]
        rows.append(
            [name, spec.variants[name].mixer]
            + [f"{row['mean_eval_loss'][d]['mean']:.4f} ± {row['mean_eval_loss'][d]['sd']:.4f}" for d in domains]
            + [f"{delta['mean']:+.4f}", ", ".join(f"{x:+.4f}" for x in delta["per_seed"]), delta.get("p_value", "")]
            + [", ".join(f"{d} {x:g}" for d, x in row["epochs"].items())]
        )
    heads = ["variant", "mixer", *domains, "Δ mean", "per seed", "p (paired t)", "epochs"]
    series = {}
    for name in variants:
        hist = [results[(name, s)]["history"] for s in spec.seeds]
        steps = [h["step"] for h in hist[0] if "mean_eval_set_loss" in h]
        means = [sum(h[i]["mean_eval_set_loss"] for h in hist) / len(hist) for i in range(len(steps))]
        series[name] = (steps, means)
    body = [
        note(
            f"{summary['tokens_per_run']:,} training tokens per run; seeds {summary['seeds']}; "
            f"baseline {summary['baseline']}; eval sets: {', '.join(spec.eval)}."
        ),
        table(heads, rows),
        charts.curves(series, "mean eval-set loss (mean over seeds)", "nats/token"),
    ]
    for name in variants:
        weights = weight_series([results[(name, s)]["history"] for s in spec.seeds])
        if weights:
            body.append(charts.curves(weights, f"{name}: mixture weights (mean over seeds)", "weight"))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Sluice ablation</title><style>{CSS}</style></head><body>"
        f"<h1>Sluice ablation</h1>{''.join(body)}</body></html>\n"
    )
