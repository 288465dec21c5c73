"""Mixer service benchmark: delivered tokens/s to 1, 4 and 8 client processes over loopback against an
in-process read of the same shards, feedback round trip, and server memory over a long run.

The corpus is synthetic pre-tokenized shards written like a run's (zstd Parquet through
``storage.shards.write_table_atomic``, row groups of 8192 documents, a 1% holdout): 4 domains,
log-normal document lengths (median ~500 tokens), skewed token ids below 49,152. It is written once to
``benchmarks/results/mixer-corpus-<size>/`` and reused.

1. Ceiling: one process reads the shards' ``tokens`` column row group by row group and cuts it into the
   tensors a trainer gets (``input_ids`` int64 [B, L] plus ``labels``), as fast as it can.
2. Served: ``python -m mixers.cli`` in its own process (stratified mixer, seq_len 2048, global batch B)
   and N client processes, each a ``MixtureStream`` rank of world N, counting the tokens of the tensors
   they receive during the same wall-clock window (after a warm-up). Every configuration runs at two
   global batches: 64 sequences (131K tokens a step: a rank's message at 8 ranks is 8 sequences, so
   per-message costs dominate) and 256 (0.5M tokens a step, GPT-3 Small's batch; still 8× below
   Llama's 4M).
   Besides tokens/s, each run records CPU seconds (user + system, all threads) of the server and of
   every client over the window, as milliseconds of CPU per million tokens delivered: on a machine
   where the server and the clients share the cores, that is what the ratio to the ceiling comes
   down to, and it does not move with the scheduling noise of a shared machine.
3. Feedback round trip: ``MixtureStream.report`` (per-domain aggregation + one DoAction) timed one by one,
   against an idle server and while 4 clients stream; and the server's own share (``MixerEngine.feedback``
   called in-process), to tell code cost from waiting for a CPU.
4. Server RSS, sampled every second over a long single-client run that passes through many epochs.

The ceiling and the served runs alternate over several rounds (the machine may be shared); the table
shows medians and ranges, and the ratio to the ceiling is taken within each round.

Run:
    .venv/bin/python -m benchmarks.bench_mixer            # ~11 minutes
    .venv/bin/python -m benchmarks.bench_mixer --quick    # ~5 minutes: smaller corpus, 2 rounds, shorter windows
Writes benchmarks/results/bench_mixer-<UTC time>.json and prints a markdown table. Every figure is
measured in this run; the machine's core count and load average are recorded next to them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("code", "math", "web", "wiki")
SEQ_LEN, GLOBAL_BATCH = 2048, 64


# ---------------------------------------------------------------- corpus
def make_corpus(root: Path, tokens_per_domain: int, seed: int = 0) -> Path:
    """Write (once) a tokenized run: shards/domain=<d>/part-NNNNN.parquet with tokens, n_tokens, split."""
    import pyarrow as pa

    from storage.fs import resolve
    from storage.shards import write_table_atomic

    done = root / "_DONE"
    if done.exists():
        return root
    fs, base = resolve(str(root))
    rng = np.random.default_rng(seed)
    for d in DOMAINS:
        lens = np.clip(rng.lognormal(6.2, 0.8, size=tokens_per_domain // 300), 16, 8192).astype(np.int64)
        lens = lens[: int(np.searchsorted(np.cumsum(lens), tokens_per_domain))]
        total = int(lens.sum())
        toks = (49152 * rng.random(total) ** 4).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        n = len(lens)
        table = pa.table(
            {
                "id": [f"{d}-{i}" for i in range(n)],
                "source": pa.array(["synthetic"] * n),
                "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(toks)),
                "n_tokens": pa.array(lens),
                "split": np.where(rng.random(n) < 0.01, "holdout", "train"),
            }
        )
        per_file = 40_000
        for p, a in enumerate(range(0, n, per_file)):
            write_table_atomic(fs, f"{base}/shards/domain={d}/part-{p:05d}.parquet", table.slice(a, per_file))
    done.write_text("ok")
    return root


def ceiling(root: Path, seconds: float, batch: int = GLOBAL_BATCH, seq_len: int = SEQ_LEN, readers: int = 4) -> dict:
    """Tokens/s of an in-process read of the shards into trainer tensors (no mixing, no transport).

    Row groups are decoded on ``readers`` threads (as many as the server's read-ahead pool), a few
    ahead of the consumer, which cuts them into ``input_ids`` int64 [B, L] plus a ``labels`` copy, made
    exactly as ``MixtureStream`` makes them (``train_tensors`` into recycled arrays).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from mixers.client import RecycledArrays, train_tensors

    files = sorted(root.glob("shards/domain=*/part-*.parquet"))
    units = [(f, rg) for f in files for rg in range(pq.ParquetFile(f).num_row_groups)]

    def read(unit):
        f, rg = unit
        return pq.ParquetFile(f).read_row_group(rg, columns=["tokens"]).column(0).combine_chunks().flatten().to_numpy()

    per = batch * seq_len
    cpu0 = _cpu_seconds()
    tokens, t0 = 0, time.perf_counter()
    rest = np.zeros(0, np.int32)
    arrays = RecycledArrays(8)
    with ThreadPoolExecutor(readers) as pool:
        pending: deque = deque()
        i = 0
        while time.perf_counter() - t0 < seconds:
            while len(pending) < readers:
                pending.append(pool.submit(read, units[i % len(units)]))
                i += 1
            vals = pending.popleft().result()
            buf = np.concatenate([rest, vals]) if len(rest) else vals
            n = len(buf) // per
            for k in range(n):
                ids, labels = train_tensors(buf[k * per : (k + 1) * per].reshape(batch, seq_len), arrays)
                out = {"input_ids": ids, "labels": labels}
                tokens += out["labels"].numel()
                if time.perf_counter() - t0 >= seconds:
                    break
            rest = buf[n * per :]
        for f in pending:
            f.cancel()
    dt = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    return {"tokens_per_s": tokens / dt, "seconds": dt, "cpu_ms_per_mtok": cpu / max(tokens, 1) * 1e9}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------- server and clients
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, global_batch: int = GLOBAL_BATCH) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mixers.cli", str(root), "--port", str(port), "--seq-len", str(SEQ_LEN)]
    cmd += ["--global-batch", str(global_batch), "--mixer", "stratified", "--log-every", "0", "--prefetch", "8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _client(location: str, rank: int, world: int, window, ready, q) -> None:
    """One rank: stream from the start, count the tokens received inside the shared window."""
    from mixers.client import MixtureStream

    s = MixtureStream(location, rank=rank, world_size=world, prefetch=4, reconnect_timeout=60)
    tokens = batches = 0
    said_ready = False
    cpu0 = None
    for b in s:
        if not said_ready:
            ready.put(rank)
            said_ready = True
        now = time.time()
        t_start, t_end = window[0], window[1]
        if now >= t_end:
            break
        if now >= t_start:
            if cpu0 is None:
                cpu0 = _cpu_seconds()
            tokens += b["input_ids"].numel()
            batches += 1
    cpu = _cpu_seconds() - cpu0 if cpu0 is not None else 0.0
    s.close()
    q.put({"rank": rank, "tokens": tokens, "batches": batches, "cpu_s": cpu})


class RssSampler:
    """Samples a process's RSS once a second on a thread."""

    def __init__(self, pid: int) -> None:
        import threading

        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        t0 = time.time()
        while not self._stop.wait(1.0):
            try:
                self.samples.append((time.time() - t0, self.proc.memory_info().rss))
            except Exception:  # the process ended
                return

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._t.join()
        return self.samples


def served(
    root: Path, n_clients: int, seconds: float, warmup: float, rtt_n: int = 0, global_batch: int = GLOBAL_BATCH
) -> dict:
    """Aggregate tokens/s to ``n_clients`` client processes (one rank each) and the CPU it cost the server
    and the clients; optionally time feedback meanwhile."""
    import psutil

    from mixers.client import MixtureStream

    port = _free_port()
    proc = start_server(root, port, global_batch)
    location = f"grpc://127.0.0.1:{port}"
    procs = []
    try:
        probe = MixtureStream(location, rank=0, world_size=n_clients, reconnect_timeout=120)
        probe.info  # noqa: B018 - waits until the server answers
        rss = RssSampler(proc.pid)
        ctx = mp.get_context("spawn")
        q, ready = ctx.Queue(), ctx.Queue()
        window = ctx.Array("d", [float("inf"), float("inf")], lock=False)
        procs = [ctx.Process(target=_client, args=(location, r, n_clients, window, ready, q)) for r in range(n_clients)]
        for p in procs:
            p.start()
        for _ in procs:  # every client has its first batch: connected, imported, streaming
            ready.get(timeout=300)
        t_start = time.time() + warmup
        t_end = t_start + seconds
        window[1] = t_end
        window[0] = t_start
        rtt = None
        server = psutil.Process(proc.pid)
        time.sleep(max(0.0, t_start - time.time()))
        cpu0 = sum(server.cpu_times()[:2])
        if rtt_n:
            rtt = feedback_rtt(probe, rtt_n, n_clients, deadline=t_end, global_batch=global_batch)
        time.sleep(max(0.0, t_end - time.time()))
        server_cpu = sum(server.cpu_times()[:2]) - cpu0
        results = [q.get(timeout=seconds + warmup + 300) for _ in procs]
        for p in procs:
            p.join()
        samples = rss.stop()
        probe.close()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        stop_server(proc)
    total = sum(r["tokens"] for r in results)
    per_mtok = 1e9 / max(total, 1)
    return {
        "clients": n_clients,
        "global_batch": global_batch,
        "tokens_per_s": total / seconds,
        "server_cpu_ms_per_mtok": server_cpu * per_mtok,
        "clients_cpu_ms_per_mtok": sum(r["cpu_s"] for r in results) * per_mtok,
        "per_client_tokens_per_s": [r["tokens"] / seconds for r in results],
        "batches": sum(r["batches"] for r in results),
        "server_rss_max_mb": max((s for _, s in samples), default=0) / 2**20,
        "feedback_under_load": rtt,
    }


def latency_summary(times: list[float]) -> dict:
    """Count, p50, p99 and max of call times in ms."""
    times = sorted(times)
    return {
        "n": len(times),
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
        "max_ms": times[-1],
    }


def feedback_rtt(
    stream, n: int, world: int, deadline: float | None = None, step0: int = 0, global_batch: int = GLOBAL_BATCH
) -> dict:
    """Time ``stream.report`` one call at a time (distinct (step, rank) pairs); p50/p99 in ms.

    Reported steps follow the server's (untimed ``status`` every 100 calls): streaming clients move it
    by hundreds of steps a second, and the server only takes feedback within its window of steps.
    Each report's per-sequence domains are the ones the server serves that rank at that step
    (a pure function of seed, step and weights, computed untimed), since the server refuses a
    report that claims tokens of a domain the rank was not served.
    """
    import torch

    from mixers.server.sampler import slot_domains

    per = global_batch // world
    losses = torch.rand(per, dtype=torch.float32) + 2.0
    seed = stream.info["seed"]
    weights = np.asarray([stream.status()["weights"][d] for d in stream.domains], dtype=np.float64)
    times = []
    rank0 = stream.rank
    step = step0
    for i in range(n):
        if deadline is not None and time.time() > deadline:
            break
        if i % 100 == 0:
            step = max(step, stream.status()["produced_through"] + 1)
        stream.rank = i % world
        slots = slot_domains(seed, step, global_batch, weights)[stream.rank * per : (stream.rank + 1) * per]
        domains = torch.from_numpy(slots.astype(np.int64))
        t0 = time.perf_counter()
        stream.report(step, losses, domains)
        times.append((time.perf_counter() - t0) * 1e3)
        step += stream.rank == world - 1
    stream.rank = rank0
    return latency_summary(times)


def idle_rtt(root: Path, n: int) -> dict:
    """Feedback round trips on an idle server: the client first receives ``n`` + 50 steps (untimed),
    then reports each of them, as a trainer would; only the reports are timed, the first 50 warm up."""
    import torch

    from mixers.client import MixtureStream

    port = _free_port()
    proc = start_server(root, port)
    s = MixtureStream(f"grpc://127.0.0.1:{port}", rank=0, world_size=1, reconnect_timeout=120, max_steps=n + 50)
    received = [(b["step"], b["domain"].clone()) for b in s]
    times = []
    for i, (step, domains) in enumerate(received):
        losses = torch.rand(domains.shape[0], dtype=torch.float32) + 2.0
        t0 = time.perf_counter()
        s.report(step, losses, domains)
        if i >= 50:
            times.append((time.perf_counter() - t0) * 1e3)
    s.close()
    stop_server(proc)
    return latency_summary(times)


def server_side_feedback(root: Path, n: int) -> dict:
    """The server's own share of a round trip: ``MixerEngine.feedback`` (validate against the tokens
    served, record) called in-process; each step is produced and served first, untimed."""
    from mixers.server.engine import MixerConfig, MixerEngine

    eng = MixerEngine(str(root), MixerConfig(seq_len=SEQ_LEN, global_batch=GLOBAL_BATCH, prefetch=0)).start()
    rng = np.random.default_rng(0)
    times = []
    for i in range(n):
        batch = None
        while batch is None:
            batch = eng.batch(i, 0, timeout=5.0)
        served = np.bincount(batch.domains, minlength=len(eng.domains)) * SEQ_LEN
        body = {"step": i, "rank": 0, "world": 1, "loss_sum": {}, "tokens": {}}
        for k, d in enumerate(eng.domains):
            if served[k]:
                body["loss_sum"][d] = float(rng.random() * 1e4)
                body["tokens"][d] = int(served[k])
        t0 = time.perf_counter()
        eng.feedback("report", json.loads(json.dumps(body)))
        times.append((time.perf_counter() - t0) * 1e3)
    eng.stop()
    times.sort()
    return {"n": n, "p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (n - 1))]}


def long_run(root: Path, seconds: float, train_tokens: int) -> dict:
    """One client streams for ``seconds``; the server's RSS is sampled every second."""
    from mixers.client import MixtureStream

    port = _free_port()
    proc = start_server(root, port)
    s = MixtureStream(f"grpc://127.0.0.1:{port}", reconnect_timeout=120)
    s.info  # noqa: B018
    rss = RssSampler(proc.pid)
    tokens, t0 = 0, time.time()
    for b in s:
        tokens += b["input_ids"].numel()
        if time.time() - t0 > seconds:
            break
    s.close()
    samples = rss.stop()
    stop_server(proc)
    mb = [r / 2**20 for _, r in samples]
    tail = mb[len(mb) // 2 :] or mb
    return {
        "seconds": seconds,
        "tokens": tokens,
        "epochs": tokens / max(train_tokens, 1),
        "rss_first_mb": mb[0] if mb else None,
        "rss_max_mb": max(mb, default=None),
        "rss_last_mb": mb[-1] if mb else None,
        "rss_second_half_mean_mb": statistics.fmean(tail) if tail else None,
        "rss_samples_mb": [round(x, 1) for x in mb],
    }


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller corpus, shorter windows")
    ap.add_argument("--tokens-per-domain", type=float, default=None, help="corpus size per domain")
    ap.add_argument("--seconds", type=float, default=None, help="measurement window per client count")
    ap.add_argument("--long-seconds", type=float, default=None, help="length of the RSS run")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds of ceiling and served runs")
    ap.add_argument("--global-batch", default="64,256", help="comma-separated global batches (sequences a step)")
    args = ap.parse_args()
    tpd = int(args.tokens_per_domain or (10e6 if args.quick else 25e6))
    seconds = args.seconds or (6.0 if args.quick else 12.0)
    long_s = args.long_seconds or (20.0 if args.quick else 60.0)
    warmup = 2.0
    rounds = args.rounds or (2 if args.quick else 3)
    batches = [int(x) for x in args.global_batch.split(",")]

    RESULTS.mkdir(parents=True, exist_ok=True)
    root = make_corpus(RESULTS / f"mixer-corpus-{tpd // 10**6}M", tpd)
    from mixers.server.corpus import Corpus

    train_tokens = sum(Corpus(str(root)).tokens("train").values())
    load_before = os.getloadavg()
    out: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_before": load_before},
        "versions": {p: metadata.version(p) for p in ("pyarrow", "numpy", "torch")},
        "config": {"seq_len": SEQ_LEN, "global_batches": batches, "domains": len(DOMAINS), "seconds": seconds},
        "corpus": {"tokens_per_domain": tpd, "train_tokens": train_tokens},
    }
    print(f"corpus {root} ({train_tokens / 1e6:.0f}M train tokens); load average {load_before}", flush=True)
    # the machine is shared: alternate the ceiling and the served runs, several rounds, report medians
    out["rounds"] = []
    for r in range(rounds):
        rnd: dict = {"load_avg": os.getloadavg(), "ceiling": {}, "served": []}
        for gb in batches:
            c = rnd["ceiling"][str(gb)] = ceiling(root, seconds, batch=gb)
            print(f"round {r + 1}/{rounds} B={gb}: ceiling {c['tokens_per_s'] / 1e6:.1f}M tok/s", flush=True)
            for n in (1, 4, 8):
                res = served(root, n, seconds, warmup, global_batch=gb)
                rnd["served"].append(res)
                print(
                    f"round {r + 1}/{rounds} B={gb}: {n} clients {res['tokens_per_s'] / 1e6:.1f}M tok/s "
                    f"(CPU ms per M tokens: server {res['server_cpu_ms_per_mtok']:.1f}, "
                    f"clients {res['clients_cpu_ms_per_mtok']:.1f}; ceiling {c['cpu_ms_per_mtok']:.1f})",
                    flush=True,
                )
        # feedback while 4 clients stream: its own run, so the probe's calls do not count against throughput
        rnd["feedback_under_load"] = served(root, 4, seconds, warmup, rtt_n=2000, global_batch=batches[0])
        out["rounds"].append(rnd)
    out["summary"] = summarize(out["rounds"], batches)
    out["feedback_idle"] = idle_rtt(root, 2000)
    out["feedback_server_side"] = server_side_feedback(root, 2000)
    print(f"feedback idle p50 {out['feedback_idle']['p50_ms']:.2f} ms p99 {out['feedback_idle']['p99_ms']:.2f} ms")
    out["long_run"] = long_run(root, long_s, train_tokens)
    out["machine"]["load_avg_after"] = os.getloadavg()

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench_mixer-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    print_table(out)
    print(f"\nresults: {path}")


def summarize(rounds: list[dict], batches: list[int]) -> dict:
    """Per global batch: medians (and ranges) over the rounds; the ratio is taken within each round,
    then its median."""

    def med(xs):
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    out: dict = {"batches": {}}
    for gb in batches:
        ceil = [r["ceiling"][str(gb)] for r in rounds]
        cell = {
            "ceiling": med([c["tokens_per_s"] for c in ceil]),
            "ceiling_cpu_ms_per_mtok": med([c["cpu_ms_per_mtok"] for c in ceil]),
            "served": {},
        }
        for n in (1, 4, 8):
            runs = [(r["ceiling"][str(gb)], s) for r in rounds for s in r["served"]]
            runs = [(c, s) for c, s in runs if s["global_batch"] == gb and s["clients"] == n]
            cell["served"][str(n)] = {
                "tokens_per_s": med([s["tokens_per_s"] for _, s in runs]),
                "vs_ceiling": med([s["tokens_per_s"] / c["tokens_per_s"] for c, s in runs]),
                "server_cpu_ms_per_mtok": med([s["server_cpu_ms_per_mtok"] for _, s in runs]),
                "clients_cpu_ms_per_mtok": med([s["clients_cpu_ms_per_mtok"] for _, s in runs]),
            }
        out["batches"][str(gb)] = cell
    loads = [r["feedback_under_load"]["feedback_under_load"] for r in rounds]
    out["feedback_under_load"] = {
        "p50_ms": statistics.median(x["p50_ms"] for x in loads),
        "p99_ms": statistics.median(x["p99_ms"] for x in loads),
    }
    out["server_rss_max_mb"] = max(s["server_rss_max_mb"] for r in rounds for s in r["served"])
    return out


def print_table(r: dict) -> None:
    s = r["summary"]
    m = r["machine"]
    loads = [f"{x['load_avg'][0]:.1f}" for x in r["rounds"]]

    def rng(x, scale=1e6, fmt="{:.1f}M"):
        return f"{fmt.format(x['median'] / scale)} ({fmt.format(x['min'] / scale)}–{fmt.format(x['max'] / scale)})"

    print(
        f"\n### Mixer service — {m['cpus']} CPUs shared with other work "
        f"(1-min load average {', '.join(loads)} at the start of each of {len(loads)} rounds)\n"
    )
    print(
        "| global batch | measurement | tokens/s, median (range) | vs in-process read, median (range) "
        "| CPU ms per M tokens: server + clients | target |"
    )
    print("|---:|---|---:|---:|---:|---|")
    for gb, cell in s["batches"].items():
        tok = int(gb) * r["config"]["seq_len"]
        label = f"{gb} ({tok / 1e6:.2f}M tok)"
        print(
            f"| {label} | in-process read of the shards (ceiling) | {rng(cell['ceiling'])} | 100% "
            f"| {cell['ceiling_cpu_ms_per_mtok']['median']:.1f} | |"
        )
        for n, v in cell["served"].items():
            target = ">= 50M tok/s, >= 50%" if n == "4" else ""
            ratio = v["vs_ceiling"]
            srv, cli = v["server_cpu_ms_per_mtok"]["median"], v["clients_cpu_ms_per_mtok"]["median"]
            print(
                f"| {label} | served to {n} client process{'es' if n != '1' else ''} | {rng(v['tokens_per_s'])} | "
                f"{ratio['median']:.0%} ({ratio['min']:.0%}–{ratio['max']:.0%}) | {srv:.1f} + {cli:.1f} "
                f"= {srv + cli:.1f} | {target} |"
            )
    print("\n| feedback round trip (`MixtureStream.report`) | p50 | p99 | target |")
    print("|---|---:|---:|---|")
    idle = r["feedback_idle"]
    print(f"| idle server | {idle['p50_ms']:.2f} ms | {idle['p99_ms']:.2f} ms | p99 < 5 ms |")
    srv = r["feedback_server_side"]
    print(f"| server-side handling only (in-process) | {srv['p50_ms']:.3f} ms | {srv['p99_ms']:.3f} ms | |")
    load = s["feedback_under_load"]
    print(
        f"| while 4 clients stream (global batch {r['config']['global_batches'][0]}, median over rounds) "
        f"| {load['p50_ms']:.2f} ms | {load['p99_ms']:.2f} ms | p99 < 5 ms |"
    )
    lr = r["long_run"]
    print(
        f"\nServer RSS over a {lr['seconds']:.0f} s single-client run ({lr['epochs']:.1f} epochs of the corpus): "
        f"first {lr['rss_first_mb']:.0f} MB, max {lr['rss_max_mb']:.0f} MB, last {lr['rss_last_mb']:.0f} MB; "
        f"max during the client runs {s['server_rss_max_mb']:.0f} MB."
    )


if __name__ == "__main__":
    main()
