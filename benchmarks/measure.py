"""Measuring a benchmark's processes: CPU seconds of a whole process tree (Ray workers, datatrove's
workers, a child interpreter), its peak memory, the machine's load while it runs, and a script run in
another interpreter (e.g. a venv with a peer installed) that prints one ``RESULT <json>`` line."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time

import numpy as np


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd`` to its end: (the finished process with its stdout and stderr, wall seconds from start to exit,
    CPU seconds of the process and every process it started, polled by :class:`TreeCpu`)."""
    with TreeCpu() as cpu_meter, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        cpu_meter.watch(proc.pid)
        proc.wait()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    return done, wall, cpu_meter.total


def run_script(python: str, script: str, args: dict, env: dict[str, str] | None = None) -> dict:
    """Run ``script`` (Python source that prints one ``RESULT <json>`` line) in another interpreter, e.g. a venv
    with datatrove, with ``args`` as JSON in ``sys.argv[1]``; its result with ``wall_seconds`` and ``cpu_seconds``
    (the process and all its workers, imports included) added."""
    done, wall, cpu = run_measured([python, "-c", script, json.dumps(args)], env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{python} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    res = json.loads(line[len("RESULT ") :])
    res["wall_seconds"], res["cpu_seconds"] = wall, cpu
    return res


# ---------------------------------------------------------------------- CPU and memory accounting
def tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system, including reaped children) of this process and every descendant, by pid."""
    import psutil

    me = psutil.Process()
    out: dict[int, float] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system + t.children_user + t.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class Sampler:
    """A background thread calling :meth:`sample` every ``interval`` seconds while the ``with`` block runs (or
    from :meth:`start` to :meth:`stop`)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TreeCpu(Sampler):
    """CPU seconds of a process tree, polled: the last reading of every pid ever seen, summed.

    Workers that datatrove's executor forks (via its forkserver) are not reaped into our
    rusage, so the tree is polled every 0.2 s; a worker loses at most its last 0.2 s.
    """

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(interval)
        self.seen: dict[tuple[int, float], float] = {}
        self._root: int | None = None

    def watch(self, pid: int) -> None:
        self._root = pid

    def sample(self) -> None:
        import psutil

        if self._root is None:
            return
        try:
            root = psutil.Process(self._root)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system  # every descendant is polled itself
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    @property
    def total(self) -> float:
        return sum(self.seen.values())


# ---------------------------------------------------------------------- memory sampling
def tree_memory() -> list[tuple[object, object]]:
    """``(process, memory_full_info)`` of this process and every live descendant (psutil)."""
    import psutil

    me = psutil.Process()
    out = []
    for p in [me, *me.children(recursive=True)]:
        try:
            out.append((p, p.memory_full_info()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


class PeakMemory(Sampler):
    """Samples the summed PSS (RSS where PSS is unavailable) of this process and all its descendants."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.peak = 0

    def sample(self) -> None:
        self.peak = max(self.peak, sum(getattr(mem, "pss", mem.rss) for _, mem in tree_memory()))


class LoadSampler(Sampler):
    """The 1-minute load average, sampled every ``interval`` seconds from construction to ``stop()``."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.samples: list[float] = []
        self.start()

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        x = np.array(self.samples or [0.0])
        return {
            "min": round(float(x.min()), 2),
            "median": round(float(np.median(x)), 2),
            "max": round(float(x.max()), 2),
        }
