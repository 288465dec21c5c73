"""A CPU model stage end to end: ``sluice curate`` with one ``perplexity`` stage against the bare forward pass.

Issue 18 item 3: a model actor should use the CPUs of its node, not the one torch thread Ray's
``OMP_NUM_THREADS`` gives it. Same documents (real text: chunks of the READMEs of installed
distributions, as in ``bench_scoring``), same ``max_tokens`` and batch size:

* ``bare``: in one process, torch with its default threads (all cores), the packaged SmolLM2 forward
  pass over the length-sorted token sequences (``bench_scoring.bench_perplexity_throughput``, best of
  ``--rounds``), and the ``perplexity`` operator itself called in that process;
* ``curate``: ``sluice curate`` of a recipe holding only that ``perplexity`` stage, as a user runs it
  (a fresh process: read, the model's load, scoring, shards, manifest), once per ``--engines``:
  ``ray`` (Ray's start, the model in an actor) and ``local`` (in process, what ``auto`` picks for an
  input this small). Tokens/s is counted two ways: over the segment's wall time (what the stage costs
  inside a run) and over the whole command (what a user waits for, fixed costs included).

``--checkout DIR`` runs the ``curate`` side from another checkout (e.g. ``git worktree add /tmp/old REV``)
with this venv, for a before/after on the same machine.

Run::

    .venv/bin/python -m benchmarks.bench_model_stage                  # ~5 min on 2 idle cores
    .venv/bin/python -m benchmarks.bench_model_stage --checkout /tmp/old

Writes ``benchmarks/results/bench_model_stage-<UTC>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.bench_scoring import RESULTS, _chunks, bench_perplexity_throughput, readme_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def documents(n: int) -> list[str]:
    """``n`` paragraph-aligned chunks of about 1,500 characters of installed packages' READMEs."""
    out: list[str] = []
    for text in readme_texts():
        out.extend(_chunks(text, 1500))
        if len(out) >= n:
            break
    return out[:n]


def bare(texts: list[str], max_tokens: int, batch_size: int, rounds: int) -> dict:
    """The operator and the bare forward pass in this process, torch at its default thread count."""
    from operators.perplexity import Perplexity

    op = Perplexity(stage="perplexity", max_tokens=max_tokens, batch_size=batch_size)
    return bench_perplexity_throughput(op, texts, rounds)


def curate(
    texts: list[str], max_tokens: int, batch_size: int, work: Path, checkout: Path | None, engine: str | None
) -> dict:
    """``sluice curate`` of a one-stage recipe in a fresh process; wall of the command and of the segment."""
    data = work / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i:05d}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = work / "out"
    recipe = work / "recipe.yaml"
    recipe.write_text(
        f"inputs:\n  - {{path: {data}, domain: docs}}\n"
        f"stages:\n  - {{op: perplexity, max_tokens: {max_tokens}, batch_size: {batch_size}}}\n"
        f"output: {{dir: {out}}}\n"
    )
    cmd = [sys.executable, "-m", "pipelines.cli", "curate", str(recipe), "-o", str(out)]
    cmd += ["--engine", engine] if engine else []  # a checkout from before engines existed always used Ray
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=checkout or Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    stage = next(s for s in manifest["stages"] if s["op"] == "perplexity")
    return {
        "command_seconds": round(wall, 2),
        "segment_seconds": round(sum(s["wall_seconds"] for s in manifest["segments"]), 2),
        "stage_busy_seconds": stage["seconds"],
        "rows": stage["rows_in"],
        "checkout": str(checkout) if checkout else "this one",
        "engine": manifest["cluster"].get("engine", "ray"),
        "cluster": manifest["cluster"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=240)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the in-process measurement (best is kept)")
    p.add_argument("--checkout", type=Path, default=None, help="run `sluice curate` from this checkout")
    p.add_argument(
        "--engines", default="ray,local", help="engines to run `sluice curate` with ('' for a checkout without them)"
    )
    a = p.parse_args(argv)
    texts = documents(a.docs)
    import torch

    ref = bare(texts, a.max_tokens, a.batch_size, a.rounds)
    tokens = ref["tokens"]
    bare_tps = ref["tokens_per_s_best"]["bare_sorted"]
    runs = {}
    for engine in a.engines.split(",") if a.engines else [None]:
        with tempfile.TemporaryDirectory() as tmp:
            run = curate(texts, a.max_tokens, a.batch_size, Path(tmp), a.checkout, engine)
        seg_tps, cmd_tps = tokens / run["segment_seconds"], tokens / run["command_seconds"]
        run["tokens_per_s"] = {"segment": round(seg_tps, 1), "command": round(cmd_tps, 1)}
        run["segment_vs_bare"], run["command_vs_bare"] = round(seg_tps / bare_tps, 3), round(cmd_tps / bare_tps, 3)
        runs[engine or "default"] = run
    result = {
        "cpus": os.cpu_count(),
        "torch_threads_in_process": torch.get_num_threads(),
        "docs": len(texts),
        "tokens": tokens,
        "in_process": ref,
        "curate": runs,
        "tokens_per_s": {"bare_forward": round(bare_tps, 1), "operator_in_process": ref["tokens_per_s_best"]["scorer"]},
        "load_average": os.getloadavg(),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench_model_stage-{stamp}.json").write_text(json.dumps(result, indent=1))
    t = result["tokens_per_s"]
    print(
        f"{len(texts)} docs, {tokens} tokens: bare forward {t['bare_forward']} tok/s, operator in process "
        f"{t['operator_in_process']}"
    )
    for name, r in runs.items():
        c = r["tokens_per_s"]
        print(
            f"| curate ({name}) | segment {c['segment']} tok/s ({r['segment_vs_bare']:.0%}) "
            f"| whole command {c['command']} ({r['command_vs_bare']:.0%}) |"
        )
    return result


if __name__ == "__main__":
    main()
