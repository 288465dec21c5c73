"""Faults that lose nothing: a killed worker, a killed driver, an unwritable or full output disk.

(An operator raising on one batch, quarantine vs ``on_error: fail`` and an in-process crash
then resume are in test_runner.py.) Every case checks conservation and what the manifest says.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.runner import run
from tests.conftest import write_jsonl
from tests.operators.test_classifier import topic_doc
from tests.pipelines.test_runner import _corpus, _recipe, _shard_digests

pytestmark = pytest.mark.usefixtures("ray_session")
SLUICE = str(Path(sys.executable).parent / "sluice")


def _same_output(a: Path, b: Path) -> None:
    assert _shard_digests(a) == _shard_digests(b)


def test_killed_worker_is_retried_and_the_output_is_identical(tmp_path):
    _corpus(tmp_path)
    once = tmp_path / "killed-once"
    stages = f"  - {{op: normalize}}\n  - {{op: inject_fault, mode: exit, once_file: '{once}', match: 'Story 7 part'}}"
    once.write_text("fired before")  # the clean run: the fault has already fired, so it never fires
    clean = run(_recipe(tmp_path, stages, out="clean"))
    once.unlink()
    survived = run(_recipe(tmp_path, stages, out="killed"))
    pid = int(once.read_text())  # a worker claimed the fault and exited mid-stage…
    assert pid != os.getpid()
    _same_output(tmp_path / "killed", tmp_path / "clean")  # …and Ray re-ran its task
    assert survived["conservation"] == clean["conservation"] and survived["conservation"]["ok"]
    assert all("operator_error" not in s["removed"] for s in survived["stages"])
    assert survived["segments"][0]["workers_lost"] == 1
    assert clean["segments"][0]["workers_lost"] == 0


def _descendants_of_session(sid: int) -> list[int]:
    """Pids of live processes in session ``sid`` (the killed driver's Ray processes, if any survived)."""
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.pid != sid:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def test_driver_killed_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    _corpus(tmp_path)
    flag = tmp_path / "stall"
    stages = f"  - {{op: exact_dedup}}\n  - {{op: inject_fault, mode: stall, when_file: '{flag}'}}"
    clean = run(_recipe(tmp_path, stages, out="clean"))

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f'inputs:\n  - {{path: "{tmp_path}/in/*.jsonl", domain: web, id_field: id}}\n'
        f'stages:\n{stages}\noutput: {{dir: "{tmp_path}/crashed", shard_mb: 0.002}}\n'
    )
    flag.write_text("1")
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [SLUICE, "curate", str(recipe)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stalled = Path(f"{flag}.stalled")
    try:
        deadline = time.monotonic() + 180
        while not stalled.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stalled.exists(), "the driver never reached the stalling stage"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (its local Ray)
        proc.wait(timeout=60)
        for pid in _descendants_of_session(proc.pid):
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "crashed" / "manifest.json").exists()
    done = sorted(p.parent.name for p in (tmp_path / "crashed" / "_stages").glob("*/_SUCCESS"))
    assert done == ["00-read"]  # the killed segment left no completion record

    flag.unlink()
    resumed = run(_recipe(tmp_path, stages, out="crashed"))
    _same_output(tmp_path / "crashed", tmp_path / "clean")
    assert resumed["conservation"] == clean["conservation"] and resumed["conservation"]["ok"]
    assert [s["reused"] for s in resumed["segments"]] == [True, False]


def test_unwritable_output_fails_before_any_work(tmp_path):
    _corpus(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    recipe = _recipe(tmp_path, "  - {op: exact_dedup}", out="file/out")
    t0 = time.perf_counter()
    with pytest.raises(OSError, match=r"output directory '.*/file/out' is not writable"):
        run(recipe)
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------- a real small filesystem
@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MB tmpfs mounted under tmp_path (needs root or CAP_SYS_ADMIN; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        why = res.stderr.strip() or f"exit {res.returncode}"
        pytest.skip(f"cannot mount a tmpfs to simulate a full or read-only disk: {why}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def test_read_only_or_full_output_fails_before_any_work(tmp_path, tmpfs):
    _corpus(tmp_path)
    _remount(tmpfs, "ro")
    with pytest.raises(OSError, match=r"is not writable: .*[Rr]ead-only file system"):
        run(_recipe(tmp_path, "  - {op: exact_dedup}", out="mnt/run"))
    _remount(tmpfs, "rw")
    with open(tmpfs / "filler", "wb") as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with pytest.raises(OSError, match=r"is not writable: .*No space left on device"):
        run(_recipe(tmp_path, "  - {op: exact_dedup}", out="mnt/run"))
    assert list((tmpfs / "run").iterdir()) == []  # no probe left behind, nothing written


def _big_corpus(root: Path) -> None:
    """~1 MB of incompressible-ish text (random topic words) with some exact duplicates."""
    docs = [{"id": f"d{i:03d}", "text": topic_doc(("cooking", "sports", "finance")[i % 3], i, 400)} for i in range(300)]
    docs += [{"id": f"dup{i}", "text": docs[i]["text"]} for i in range(20)]
    write_jsonl(root / "in" / "big.jsonl", docs)


def test_disk_full_mid_run_fails_clearly_and_resumes_when_space_returns(tmp_path, tmpfs, caplog):
    _big_corpus(tmp_path)
    stages = "  - {op: normalize}\n  - {op: exact_dedup}"
    clean = run(_recipe(tmp_path, stages, out="clean", shard_mb=0.05))
    written = sum(p.stat().st_size for p in (tmp_path / "clean").rglob("*") if p.is_file())
    _remount(tmpfs, f"size={written // 2 // 1024}k")  # room for about half of what the run writes
    caplog.set_level(logging.WARNING, logger="pipelines.runner")
    with pytest.raises(OSError, match=r"failed writing to .*No space left on device.*run the same command again"):
        run(_recipe(tmp_path, stages, out="mnt/run", shard_mb=0.05))
    assert "may run out of space" in caplog.text  # the pre-flight hint named the problem before the work
    assert not (tmpfs / "run" / "manifest.json").exists()
    _remount(tmpfs, "size=16m")  # space returns: the same command resumes
    resumed = run(_recipe(tmp_path, stages, out="mnt/run", shard_mb=0.05))
    _same_output(tmpfs / "run", tmp_path / "clean")
    assert resumed["conservation"] == clean["conservation"] and resumed["conservation"]["ok"]
