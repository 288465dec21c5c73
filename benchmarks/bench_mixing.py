"""The reference mixing experiment: does online mixing beat stratified on a tiny GPT, at equal token budgets?

Corpus: four domains of real text found on any Debian machine with Python, curated by
``sluice curate`` (exact dedup, tokenized with the packaged SmolLM2 tokenizer, 5% held out):

- ``code``: standard-library Python modules;
- ``manpages``: roff sources of the installed manual pages;
- ``changelogs``: Debian package changelogs;
- ``clidocs``: the AWS CLI's reStructuredText usage examples (if awscli is installed; else
  the installed distributions' READMEs).

Each method trains the same tiny GPT (``mixers.train``: 2 layers, 64 wide, compact 4096-token
vocabulary) for the same number of steps from the same initialisation, per seed; the seed also
changes the mixer's sampling. Methods (see :data:`METHODS`): ``stratified``; ``aioli`` with its
defaults, planned by the run's length (``mixers.train`` passes ``--steps`` as the server's
``total_steps``); ``aioli-ref``, the Aioli repository's k = 7 settings it used before for k >= 3
(2 × 10 probe steps per domain every 200 steps from step 1, η 1); ``aioli-short``, the 1 × 5
every ``--aioli-every`` steps of the issue-7 table; ``ado``, ``odm`` with their defaults; ``dga``
steering toward ``--target``. Reported: mean held-out loss over the domains and the target
domain's held-out loss, per method: mean ± standard deviation over seeds, per-seed differences to
stratified (paired by seed), and the steps each run spent on Aioli's probe mixtures.

Run:
    .venv/bin/python -m benchmarks.bench_mixing --methods stratified,aioli-ref,aioli,ado   # 3 seeds
    .venv/bin/python -m benchmarks.bench_mixing --steps 60 --seeds 1                       # a smoke run
Writes benchmarks/results/bench_mixing-<UTC time>.json and .png (loss curves) and a markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from mixers.train import save_figure

RESULTS = Path(__file__).parent / "results"
SITE = Path(sysconfig.get_paths()["purelib"])

RECIPE = """\
inputs:
{inputs}
stages:
  - {{op: normalize}}
  - {{op: length, min_chars: 200, max_chars: 100000}}
  - {{op: exact_dedup}}
  - {{op: tokenize, tokenizer: "packaged:smollm2-135m"}}
  - {{op: split, holdout_fraction: 0.05}}
output: {{dir: "{out}", shard_mb: 8}}
"""


def _read_gz(path: Path) -> str:
    with gzip.open(path, "rt", errors="replace") as f:
        return f.read()


def _clidocs() -> list[tuple[str, str]]:
    root = next((Path(p) / "awscli" / "examples" for p in sys.path if (Path(p) / "awscli" / "examples").is_dir()), None)
    if root is None:
        root = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/awscli/examples")
    if root.is_dir():
        return [(str(p.relative_to(root)), p.read_text(errors="replace")) for p in sorted(root.rglob("*.rst"))]
    from importlib import metadata

    return [(d.metadata["Name"], d.metadata.get_payload() or "") for d in metadata.distributions()]


def sources() -> dict[str, list[tuple[str, str]]]:
    """Domain -> [(name, text)] from the machine."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [
        (str(p.relative_to(stdlib)), p.read_text(errors="replace"))
        for p in sorted(stdlib.rglob("*.py"))
        if not {"site-packages", "test", "tests", "idlelib"} & set(p.parts)
    ]
    man = [(p.name, _read_gz(p)) for p in sorted(Path("/usr/share/man").glob("man[1-8]/*.gz"))]
    changelogs = [(p.parent.name, _read_gz(p)) for p in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz"))]
    return {"code": code, "manpages": man, "changelogs": changelogs, "clidocs": _clidocs()}


def build_corpus(data: Path, max_chars: int) -> dict[str, int]:
    """Write ``data/<domain>.jsonl`` with at most ``max_chars`` characters per domain; return docs per domain."""
    data.mkdir(parents=True, exist_ok=True)
    counts = {}
    for domain, docs in sources().items():
        if len(docs) < 20:
            raise SystemExit(f"domain {domain!r}: only {len(docs)} documents on this machine")
        total, n = 0, 0
        with open(data / f"{domain}.jsonl", "w") as f:
            for name, text in docs:
                if total >= max_chars:
                    break
                text = text[:100_000]
                f.write(json.dumps({"id": f"{domain}/{name}", "text": text}) + "\n")
                total += len(text)
                n += 1
        counts[domain] = n
    return counts


def curate(work: Path, max_chars: int) -> Path:
    out = work / "run"
    if (out / "manifest.json").exists():
        return out
    data = work / "data"
    counts = build_corpus(data, max_chars)
    print("corpus:", counts, flush=True)
    recipe = work / "recipe.yaml"
    inputs = "\n".join(f'  - {{path: "{data}/{d}.jsonl", domain: {d}, id_field: id}}' for d in sorted(counts))
    recipe.write_text(RECIPE.format(inputs=inputs, out=out))
    subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(recipe), "-o", str(out)], check=True)
    return out


def _params(**kw: object) -> list[str]:
    return [a for k, v in kw.items() for a in ("--param", f"{k}={json.dumps(v)}")]


#: method -> (mixer, its --param arguments; a callable of the parsed args where they depend on them)
METHODS = {
    "stratified": ("stratified", []),
    "aioli": ("aioli", []),
    # the Aioli repository's k = 7 settings, which the defaults were for k >= 3 before the probe budget
    # followed the run's length: rounds of 200 steps from step 1, each opening with 2 × 10 steps per domain
    "aioli-ref": (
        "aioli",
        _params(total_steps=None, lp_rounds=2, lp_steps=10, update_every=200, eta=1.0, one_hot_factor=0.75),
    ),
    # the issue-7 table's setting: 1 × 5 probe steps per domain every --aioli-every steps from step 1
    "aioli-short": (
        "aioli",
        lambda a: _params(total_steps=None, lp_rounds=1, lp_steps=5, update_every=a.aioli_every, eta=1.0),
    ),
    "ado": ("ado", []),
    "dga": ("dga", _params(every=10)),
    "odm": ("odm", []),
}


def probe_steps(schedule: list[dict], steps: int) -> int:
    """Steps a run served Aioli probe mixtures (schedule entries with reason ``aioli:probe:*``)."""
    out = 0
    for i, e in enumerate(schedule):
        end = schedule[i + 1]["step"] if i + 1 < len(schedule) else steps
        out += (end - e["step"]) * e["reason"].startswith("aioli:probe:")
    return out


def train(run: Path, method: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    mixer, params = METHODS[method]
    params = params(args) if callable(params) else params
    cmd = [
        sys.executable, "-m", "mixers.train", "--serve", str(run), "--mixer", mixer, *params,
        "--steps", str(args.steps), "--seq-len", str(args.seq_len), "--global-batch", str(args.batch),
        "--compact-vocab", str(args.vocab), "--eval-every", str(args.eval_every), "--eval-sequences", "32",
        "--target", args.target, "--seed", str(seed), "--mixer-seed", str(seed), "--out", str(out),
    ]  # fmt: skip
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    result = json.loads((out / "result.json").read_text())
    result["wall_s"] = round(time.time() - t0, 1)
    result["probe_steps"] = probe_steps(result["schedule"], args.steps)
    return result


def summarise(runs: dict[str, dict[int, dict]], target: str) -> dict:
    base = runs["stratified"]
    out = {}
    for method, per_seed in runs.items():
        mean = [r["mean_eval_loss"] for r in per_seed.values()]
        tgt = [r["final_eval_loss"][target] for r in per_seed.values()]
        d_mean = [per_seed[s]["mean_eval_loss"] - base[s]["mean_eval_loss"] for s in per_seed]
        d_tgt = [per_seed[s]["final_eval_loss"][target] - base[s]["final_eval_loss"][target] for s in per_seed]

        def ms(xs: list[float]) -> list[float]:
            return [statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0]

        out[method] = {
            "mean_eval_loss": ms(mean),
            "target_loss": ms(tgt),
            "delta_mean_vs_stratified": d_mean,
            "delta_target_vs_stratified": d_tgt,
            "final_weights": {s: r["schedule"][-1]["weights"] for s, r in per_seed.items()},
            "probe_steps": [r["probe_steps"] for r in per_seed.values()],
            "wall_s": [r["wall_s"] for r in per_seed.values()],
        }
    return out


def plot(runs: dict[str, dict[int, dict]], target: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for method, per_seed in runs.items():
        for i, r in enumerate(per_seed.values()):
            h = r["history"]
            kw = {"label": method} if i == 0 else {}
            color = f"C{list(METHODS).index(method)}"
            ax_m.plot([x["step"] for x in h], [x["mean_eval_loss"] for x in h], color=color, alpha=0.7, **kw)
            ax_t.plot([x["step"] for x in h], [x["eval_loss"][target] for x in h], color=color, alpha=0.7, **kw)
    ax_m.set(title="mean held-out loss over domains", xlabel="step", ylabel="nats/token")
    ax_t.set(title=f"held-out loss on the target ({target})", xlabel="step")
    save_figure(fig, (ax_m, ax_t), path)


def _without_history(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "history"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="stratified,aioli-ref,aioli,ado,dga,odm", help=", ".join(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target", default="manpages")
    p.add_argument("--aioli-every", type=int, default=100, help="aioli-short's round length (20 probe steps each)")
    p.add_argument("--max-chars", type=int, default=3_000_000, help="characters per domain")
    p.add_argument("--work", default=str(RESULTS / "mixing"))
    args = p.parse_args()
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        p.error(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    work = Path(args.work)
    run = curate(work, args.max_chars)
    runs: dict[str, dict[int, dict]] = {}
    for seed in range(args.seeds):
        for method in args.methods.split(","):
            r = train(run, method, seed, args, work / f"{method}-seed{seed}")
            runs.setdefault(method, {})[seed] = r
            print(f"{method} seed {seed}: mean {r['mean_eval_loss']:.4f} {args.target} "
                  f"{r['final_eval_loss'][args.target]:.4f} ({r['wall_s']} s)", flush=True)  # fmt: skip
    summary = summarise(runs, args.target)
    manifest = json.loads((run / "manifest.json").read_text())
    report = {
        "settings": vars(args),
        "domains": manifest["domains"],
        "summary": summary,
        "runs": {m: {s: _without_history(r) for s, r in rs.items()} for m, rs in runs.items()},
        "load_avg": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"bench_mixing-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    png = RESULTS / f"bench_mixing-{stamp}.png"
    plot(runs, args.target, png)
    print(f"\n| method | mean held-out loss | Δ vs stratified (per seed) | {args.target} loss | Δ vs stratified "
          "| probe steps |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for m, s in summary.items():
        dm = ", ".join(f"{x:+.3f}" for x in s["delta_mean_vs_stratified"])
        dt = ", ".join(f"{x:+.3f}" for x in s["delta_target_vs_stratified"])
        probes = max(s["probe_steps"])
        print(f"| {m} | {s['mean_eval_loss'][0]:.4f} ± {s['mean_eval_loss'][1]:.4f} | {dm} "
              f"| {s['target_loss'][0]:.4f} ± {s['target_loss'][1]:.4f} | {dt} | {probes} |")  # fmt: skip
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
