"""The run directory's rules: ownership marker, safe deletes, strict names, the lock."""

import json
import os
import socket
import subprocess
import sys

import pytest

from storage.fs import list_input
from storage.run import MARKER, RunDir, RunLockedError, UnsafePathError, check_name, is_own


def _run_tree(root):
    for rel in (
        "manifest.json",
        "shards/domain=web/part-00000.parquet",
        "removed/stage=input/part-00000.parquet",
        "_stages/00-normalize/_SUCCESS",
        "_stages/00-normalize/live/part-00000.parquet",
        "_stages/00-normalize/_tmp/000000-00000-0123abcd.parquet",
    ):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_layout_paths_are_own_and_others_are_not():
    for rel in ("manifest.json", "shards/domain=web/part-00003.parquet", "_stages/01-exact_dedup/_SUCCESS",
                "removed/stage=select/part-00000.parquet.0123abcd.tmp", "_tmp/000001-00002-deadbeef.parquet",
                "manifest.json.1234.tmp", ".sluice-run", "report.html"):  # fmt: skip
        assert is_own(rel), rel
    for rel in ("notes.txt", "shards/domain=web/mine.parquet", "data/web.jsonl", "_stages/x/../../etc",
                "shards/domain=web/part-00000.parquet/evil", "_stages/00-a/live/readme.md"):  # fmt: skip
        assert not is_own(rel), rel


@pytest.mark.parametrize("bad", ["web\n", "x/../../victim", "..", "a..b", "", ".hidden", "a b", "é", "a" * 129, "a/b"])
def test_names_are_matched_whole(bad):
    with pytest.raises(ValueError, match="is not allowed"):
        check_name("domain", bad)
    assert check_name("domain", "web.wiki_2-x") == "web.wiki_2-x"


def test_claim_refuses_a_directory_with_foreign_files_and_deletes_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("years of work")
    with pytest.raises(UnsafePathError, match=r"holds files Sluice did not write \(thesis.tex\)"):
        RunDir(str(tmp_path / "out")).claim()
    assert (tmp_path / "out" / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "out" / MARKER).exists()


def test_claim_refuses_overlap_with_inputs_in_both_directions(tmp_path):
    (tmp_path / "data" / "web").mkdir(parents=True)
    for out, inp in (
        (tmp_path / "data", f"{tmp_path}/data/web/*.jsonl"),  # output is an input's parent
        (tmp_path / "data" / "web" / "out", f"{tmp_path}/data/web"),  # output inside an input
        (tmp_path / "data" / "web", f"{tmp_path}/data/web/a.jsonl"),
    ):
        with pytest.raises(UnsafePathError, match="overlaps an input"):
            RunDir(str(out)).claim([inp])
    RunDir(str(tmp_path / "out")).claim([f"{tmp_path}/data/web/*.jsonl"])  # a sibling is fine
    assert json.loads((tmp_path / "out" / MARKER).read_text())["sluice_run"] == 1


def test_claim_adopts_a_run_written_before_markers(tmp_path):
    _run_tree(tmp_path / "old")
    RunDir(str(tmp_path / "old")).claim()
    assert (tmp_path / "old" / MARKER).exists()


def test_delete_refuses_paths_outside_the_run_and_foreign_files(tmp_path):
    _run_tree(tmp_path / "out")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    rd = RunDir(str(tmp_path / "out"))
    for path in ("_stages/00-x/../../../victim", str(victim), "../victim", "", str(tmp_path / "out")):
        with pytest.raises(UnsafePathError):
            rd.delete(path)
    (tmp_path / "out" / "shards" / "domain=web" / "mine.csv").write_text("user data")
    with pytest.raises(UnsafePathError, match=r"mine\.csv was not written by Sluice"):
        rd.delete("shards")
    assert (tmp_path / "out" / "shards" / "domain=web" / "part-00000.parquet").exists()  # nothing deleted
    os.symlink(victim, tmp_path / "out" / "_stages" / "00-normalize" / "removed")
    with pytest.raises(UnsafePathError):  # a symlink planted in the run is not followed
        rd.delete("_stages/00-normalize/removed/precious")
    with pytest.raises(UnsafePathError, match="removed was not written by Sluice"):
        rd.delete("_stages")  # a planted symlink is not Sluice's: nothing is deleted, its target least of all
    assert (victim / "precious").read_text() == "keep"
    os.unlink(tmp_path / "out" / "_stages" / "00-normalize" / "removed")
    assert rd.delete("_stages") == 3
    assert not (tmp_path / "out" / "_stages").exists()


def test_clear_deletes_only_what_sluice_wrote(tmp_path):
    _run_tree(tmp_path / "out")
    rd = RunDir(str(tmp_path / "out"))
    rd.claim()
    assert rd.clear() == 6
    assert sorted(os.listdir(tmp_path / "out")) == [MARKER]


def test_lock_names_its_holder_and_stale_locks_are_taken_over(tmp_path):
    rd = RunDir(str(tmp_path / "out"))
    locked = pytest.raises(RunLockedError, match=rf"in use by sluice curate \(pid {os.getpid()} on")
    with rd.lock("sluice curate"), locked, RunDir(str(tmp_path / "out")).lock():
        pass
    assert not (tmp_path / "out" / ".sluice-lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = {"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0.0, "command": "sluice curate"}
    (tmp_path / "out" / ".sluice-lock").write_text(json.dumps(lock))
    with rd.lock():  # the holder is gone: stale
        assert json.loads((tmp_path / "out" / ".sluice-lock").read_text())["pid"] == os.getpid()
    lock["host"] = "another-host"
    (tmp_path / "out" / ".sluice-lock").write_text(json.dumps(lock))
    with pytest.raises(RunLockedError, match="on another-host"), rd.lock():
        pass


def test_listing_reads_dot_and_underscore_files_counts_vcs_and_excludes_and_survives_symlink_loops(tmp_path):
    d = tmp_path / "src"
    (d / "pkg" / ".git" / "objects").mkdir(parents=True)
    for rel in ("__future__.py", "_py_abc.py", ".env", "pkg/mod.py", "pkg/.git/HEAD", "pkg/notes.bak"):
        (d / rel).write_text("x")
    os.symlink(d, d / "pkg" / "loop")  # a cycle
    listing = list_input(str(d), exclude=["*.bak"])
    rel = sorted(p[len(str(d)) + 1 :] for p in listing.files)
    assert rel == [".env", "__future__.py", "_py_abc.py", "pkg/mod.py"]
    assert [(p[len(str(d)) + 1 :], why) for p, why in listing.excluded] == [
        ("pkg/.git", "version-control folder"),
        ("pkg/notes.bak", "matches exclude pattern '*.bak'"),
    ]
    assert listing.cycles == [str(d / "pkg" / "loop")]
