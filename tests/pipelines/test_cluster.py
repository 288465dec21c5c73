"""`sluice curate` on a two-node Ray cluster (ray.cluster_utils.Cluster) gives the single-node result."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from tests.conftest import prose, write_jsonl

SLUICE = str(Path(sys.executable).parent / "sluice")

#: runs in a fresh Python: the test session already holds a local Ray, and a driver joins one cluster at most
CLUSTER_SCRIPT = """
import os, subprocess, sys
from ray.cluster_utils import Cluster

recipe, out, sluice = sys.argv[1:4]
node = {"num_cpus": 1, "object_store_memory": 96 << 20}
cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
try:
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    res = subprocess.run([sluice, "curate", recipe, "-o", out], env=env, capture_output=True, text=True, timeout=240)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
finally:
    cluster.shutdown()
sys.exit(res.returncode)
"""


def _corpus(root: Path) -> None:
    """Four files; documents repeat across files (exact duplicates after normalization) and some are short."""
    for k in range(4):
        docs = [{"id": f"f{k}-{i:02d}", "text": prose(i + 3 * k)} for i in range(15)]
        docs += [{"id": f"f{k}-dup", "text": prose(1).upper()}, {"id": f"f{k}-short", "text": "too short"}]
        write_jsonl(root / "in" / f"part-{k}.jsonl", [*docs, b"{not json"])


RECIPE = """inputs:
  - {{path: "{root}/in/*.jsonl", domain: web, id_field: id}}
stages:
  - {{op: normalize}}
  - {{op: length, min_chars: 50}}
  - {{op: exact_dedup}}
  - {{op: gopher_quality}}
output: {{dir: "{root}/single", shard_mb: 0.004}}
"""


def _result(out: Path) -> tuple[list, set, dict]:
    kept = read_shards(str(out / "shards")).sort_by("id")
    removed = read_shards(str(out / "removed"))
    gone = {(r["id"], r["stage"], r["reason"], r["dup_of"]) for r in removed.to_pylist()}
    return kept.to_pylist(), gone, json.loads((out / "manifest.json").read_text())


@pytest.mark.usefixtures("ray_session")
def test_two_node_cluster_equals_single_node(tmp_path):
    _corpus(tmp_path)
    text = RECIPE.format(root=tmp_path)
    (tmp_path / "recipe.yaml").write_text(text)
    run(parse_recipe(text))

    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short (socket paths) and private: the cluster's
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}  # address file stays here
    env.pop("RAY_ADDRESS", None)
    multi = tmp_path / "multi"
    cmd = [sys.executable, "-c", CLUSTER_SCRIPT, str(tmp_path / "recipe.yaml"), str(multi), SLUICE]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert res.returncode == 0, res.stderr[-3000:]

    kept1, gone1, m1 = _result(tmp_path / "single")
    kept2, gone2, m2 = _result(multi)
    assert kept2 == kept1 and gone2 == gone1
    assert {r for _, _, r, _ in gone1} >= {"input_bad_json", "length_too_short", "exact_duplicate"}
    assert m2["conservation"] == m1["conservation"] and m2["conservation"]["ok"]
    assert [s["removed"] for s in m2["stages"]] == [s["removed"] for s in m1["stages"]]
    assert m2["cluster"] == {"nodes": 2, "cpus": 2, "gpus": 0, "joined": True, "engine": "ray"}
    assert m1["cluster"]["nodes"] == 1
    # Ray Data spread the work: some segment ran tasks on both nodes
    assert max(s["nodes"] for s in m2["segments"]) == 2, m2["segments"]
