"""Model stages on CPU: the actor's torch uses the node's CPUs it shares with other model stages."""

from __future__ import annotations

import os

from pipelines.chain import ModelChain, model_threads
from tests.conftest import make_batch

SPECS = [("perplexity", "perplexity", "quarantine", {"max_tokens": 16, "batch_size": 2})]


def test_model_stages_split_the_node_cpus():
    assert [model_threads(2, p) for p in (1, 2, 3)] == [2, 1, 1]
    assert model_threads(16, 3) == 5


def test_a_cpu_model_actor_uses_the_node_not_one_thread(ray_session):
    """Ray gives a 0.5-CPU actor OMP_NUM_THREADS=1; the chain's torch gets the node's 2 CPUs and still scores."""
    ray = ray_session
    actor = ray.remote(num_cpus=0.5)(ModelChain).remote(key="k", specs=SPECS, pools=1)

    def torch_threads(_chain: ModelChain) -> int:
        import torch

        return torch.get_num_threads()

    assert ray.get(actor.__ray_call__.remote(torch_threads)) == 2
    out = ray.get(actor.__call__.remote(make_batch(["The cat sat on the mat.", "Dogs bark at night."])))
    assert out.column("ppl").null_count == 0
    ray.kill(actor)


def test_the_operator_cache_key_covers_files_used_by_default():
    """A worker must not reuse a language_id built from an older default model file."""
    from operators.langid import packaged_model_path
    from pipelines.chain import file_state

    paths = [p for p, _, _ in file_state("language_id", {"model": None})]
    assert paths == [os.path.realpath(packaged_model_path())]
    assert file_state("normalize", {}) == []


def test_a_process_keeps_one_chain_of_models_and_the_newest_eight():
    """In-process runs build chains in the driver, run after run: a model chain replaces the previous one."""
    from pipelines import chain

    chain._CHAINS.clear()
    chain._MODEL_CHAINS.clear()
    spec = [("normalize", "normalize", "quarantine", {})]
    first = chain._chain("m1", spec, models=True)
    assert chain._chain("m1", spec, models=True) is first  # reused while it is the newest
    chain._chain("m2", spec, models=True)
    assert "m1" not in chain._CHAINS
    assert sorted(chain._MODEL_CHAINS) == ["m2"]
    for k in range(8):
        chain._chain(f"cpu{k}", spec)
    assert len(chain._CHAINS) == 8 and "m2" not in chain._CHAINS and not chain._MODEL_CHAINS
