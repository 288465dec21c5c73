"""benchmarks/gpu_check.sh --cpu: one command writes every section with real figures (or why it was skipped)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_check import SECTIONS, Skip, run_section

ROOT = Path(__file__).resolve().parents[2]


def test_the_cpu_check_measures_every_section_and_writes_one_json(tmp_path):
    out = tmp_path / "x.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "-o", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    s, sizes = r["sections"], r["sizes"]
    assert r["device"] == "cpu" and r["errors"] == [] and list(s) == list(SECTIONS)
    assert sizes["name"] == "cpu" and r["seconds"] > 0

    assert "skipped" in s["nvidia_smi"] or s["nvidia_smi"]["gpus"]  # facts where the tool exists
    facts = s["torch"]
    assert facts["cuda_available"] is False and facts["cpu_count"] >= 1 and facts["torch_threads"] == 1

    ppl = s["perplexity"]
    assert (ppl["device"], ppl["dtype"], ppl["docs"]) == ("cpu", "float32", sizes["ppl_docs"])
    assert ppl["tokens"] > ppl["docs"] and ppl["tokens_per_s"] > 0 and ppl["bare_forward_tokens_per_s"] > 0
    assert ppl["tokens_per_s"] == ppl["tokens_per_s_best"]["scorer"] and ppl["seconds"]["bare_sorted"]

    cur = s["curate"]
    assert cur["docs"] == sizes["ppl_docs"] and cur["tokens"] > cur["docs"] and cur["bare_forward_tokens_per_s"] > 0
    for engine in ("ray", "local"):  # the stage through `sluice curate` on each engine, on CPU here
        run = cur[engine]
        assert run["engine"] == engine and run["cluster"]["gpus"] == 0 and run["rows"] == sizes["ppl_docs"]
        assert 0 < run["segment_seconds"] <= run["command_seconds"] and run["segment_tokens_per_s"] > 0

    emb = s["embedding"]
    assert (emb["device"], emb["dtype"], emb["docs"]) == ("cpu", "float32", sizes["embed_docs"])
    assert emb["docs_per_s"] > 0 and "bf16" not in emb  # the bf16 comparison is a GPU measurement

    gen = s["rephrase_transformers"]
    assert (gen["device"], gen["dtype"], gen["prompts"]) == ("cpu", "float32", sizes["prompts"])
    assert 0 < gen["generated_tokens"] <= sizes["prompts"] * sizes["new_tokens"] and gen["tokens_per_s"] > 0

    vllm = s["rephrase_vllm"]
    assert set(vllm) == {"skipped", "section_seconds"}
    if importlib.util.find_spec("vllm") is None:
        assert "not installed" in vllm["skipped"]
    else:
        assert "needs a CUDA GPU (--cpu hides it)" in vllm["skipped"]

    tr = s["trainer"]
    assert (tr["device"], tr["dtype"]) == ("cpu", "float32") and all(v > 0 for v in tr["run_tokens"].values())
    assert set(tr["feeds"]) == {"in_memory", "server", "in_process"}
    step_tokens = sizes["global_batch"] * sizes["seq_len"]
    for name in ("server", "in_process"):
        feed = tr["feeds"][name]
        assert feed["tokens"] == sizes["train_steps"] * step_tokens and feed["tokens_per_s"] > 0
        assert sum(feed["tokens_by_domain"].values()) == feed["tokens"] and math.isfinite(feed["mean_eval_loss"])
        assert tr["vs_in_memory"][name] > 0
    assert tr["feeds"]["in_memory"]["tokens"] == sizes["bare_steps"] * step_tokens
    assert tr["feeds"]["server"]["mean_eval_loss"] == tr["feeds"]["in_process"]["mean_eval_loss"]  # same batches
    assert f"wrote {out}" in proc.stdout and "trainer [cpu, float32]: in_memory" in proc.stdout


def test_a_section_that_fails_or_cannot_run_is_recorded_not_raised():
    def fails():
        raise ValueError("bad input")

    def cannot():
        raise Skip("no GPU here")

    failed, skipped = run_section(fails), run_section(cannot)
    assert failed["error"] == "ValueError: bad input" and "fails" in failed["traceback"]
    assert skipped["skipped"] == "no GPU here" and skipped["section_seconds"] >= 0
