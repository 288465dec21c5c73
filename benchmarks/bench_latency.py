"""Small-run latency: ``sluice curate`` of the demo recipe as a user runs it, whole command and per segment.

Each round is a fresh process (imports, Ray start, the run, the manifest) on a fresh output directory, so
nothing is reused from an earlier round; the demo data is written first (``sluice demo-data``). The manifest
gives each segment's wall time and each stage's busy seconds. ``--checkout DIR`` runs the same command
from another checkout (``git worktree add /tmp/old REV``) with this venv, for a before/after. ``--engine``
passes ``sluice curate --engine`` (``ray``, ``local``, ``auto``: the default picks ``local`` for the demo);
leave it out for a checkout from before engines existed.

Run::

    .venv/bin/python -m benchmarks.bench_latency --rounds 3
    .venv/bin/python -m benchmarks.bench_latency --rounds 3 --checkout /tmp/old

Writes ``benchmarks/results/bench_latency-<UTC>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.bench_scoring import RESULTS

ROOT = Path(__file__).resolve().parents[1]


def one_round(cwd: Path, recipe: Path, out: Path, engine: str | None) -> dict:
    """One ``sluice curate`` in a fresh process; wall time of the command and the manifest's timings."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipelines.cli", "curate", str(recipe), "-o", str(out)]
    cmd += ["--engine", engine] if engine else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "command_seconds": round(wall, 2),
        "engine": manifest["cluster"].get("engine", "ray"),
        "run_seconds": manifest["seconds"],
        "segments": {s["name"]: s["wall_seconds"] for s in manifest["segments"]},
        "stage_busy_seconds": {s["stage"]: s["seconds"] for s in manifest["stages"] if s.get("seconds") is not None},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--checkout", type=Path, default=None, help="run `sluice curate` from this checkout")
    p.add_argument("--engine", default=None, help="sluice curate --engine (ray, local, auto)")
    a = p.parse_args(argv)
    cwd = a.checkout or ROOT
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data" / "demo"
        subprocess.run([sys.executable, "-m", "pipelines.cli", "demo-data", str(data)], check=True, cwd=cwd)
        recipe = work / "demo.yaml"
        text = (cwd / "pipelines" / "recipes" / "demo.yaml").read_text()
        recipe.write_text(text.replace("data/demo", str(data)))
        rounds = [one_round(cwd, recipe, work / "out", a.engine) for _ in range(a.rounds)]
    walls = [r["command_seconds"] for r in rounds]
    result = {
        "checkout": str(cwd),
        "rounds": rounds,
        "command_seconds_median": statistics.median(walls),
        "command_seconds_min": min(walls),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench_latency-{stamp}.json").write_text(json.dumps(result, indent=1))
    best = min(rounds, key=lambda r: r["command_seconds"])
    segs = " · ".join(f"{k} {v:.1f}" for k, v in best["segments"].items())
    median = result["command_seconds_median"]
    print(f"| {cwd} ({best['engine']}) | {median:.1f} (min {min(walls):.1f}) | {best['run_seconds']:.1f} | {segs} |")
    return result


if __name__ == "__main__":
    main()
