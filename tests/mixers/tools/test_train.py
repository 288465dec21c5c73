"""The reference trainer: trains from a real server with Aioli, plots, and resumes model + mixer together."""

import json

import numpy as np
import pytest
import torch

from mixers.tools.train import GPT, GPTConfig, TrainConfig, VocabMap, eval_set_batches, lr_at, main

TINY = ["--seq-len", "32", "--global-batch", "8", "--n-embd", "16", "--n-head", "2", "--n-layer", "1"]
AIOLI = ["--mixer", "aioli", "--param", "lp_rounds=1", "--param", "lp_steps=1", "--param", "update_every=5"]


def args(run, out, steps, *extra):
    return [
        "--serve", str(run), *AIOLI, *TINY, "--steps", str(steps), "--compact-vocab", "300",
        "--eval-every", "4", "--eval-sequences", "4", "--feedback-lag", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def test_reference_trainer_learns_with_aioli_and_plots(run_dir, tmp_path):
    out = tmp_path / "train"
    result = main(args(run_dir[0], out, 12, "--plot"))
    assert set(result["final_eval_loss"]) == {"a", "b", "c"}
    assert all(np.isfinite(v) for v in result["final_eval_loss"].values())
    first, last = result["history"][0], result["history"][-1]
    assert [h["step"] for h in result["history"]] == [4, 8, 12]
    assert last["mean_eval_loss"] < first["mean_eval_loss"]  # it learns
    reasons = [e["reason"] for e in result["schedule"]]
    assert sum(r.startswith("aioli:probe:") for r in reasons) >= 3 and any(r.startswith("aioli@") for r in reasons)
    assert result["mixer"]["state"]["rounds_done"] >= 1
    assert (out / "mixing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    saved = json.loads((out / "result.json").read_text())
    assert saved["settings"]["train"]["steps"] == 12 and saved["final_eval_loss"] == result["final_eval_loss"]


def test_resume_continues_model_and_mixer_exactly(run_dir, tmp_path):
    """A run planned for 10 steps, stopped after 6 and resumed, equals the uninterrupted one (the mixer
    and the LR schedule plan by --total-steps, recorded in the mixer state)."""
    whole = main(args(run_dir[0], tmp_path / "whole", 10))
    part = tmp_path / "part"
    main(args(run_dir[0], part, 6, "--total-steps", "10"))
    resumed = main(args(run_dir[0], part, 10, "--resume"))
    assert resumed["schedule"] == whole["schedule"] and resumed["mixer"] == whole["mixer"]
    assert resumed["final_eval_loss"] == pytest.approx(whole["final_eval_loss"], rel=1e-5)
    assert whole["mixer"]["state"]["rounds_done"] >= 1  # the schedule the two agree on has a learnt round


def test_eval_sets_are_scored_on_the_same_tokens_at_every_eval(run_dir, tmp_path):
    sets = tmp_path / "qa.jsonl"
    sets.write_text(
        "\n".join(json.dumps({"question": f"Question {i}?", "answer": f"Answer {i}."}) for i in range(12))
        + "\n"
        + json.dumps({"text": "A sentence from the manual.", "domain": "manual"})
        + "\n"
    )
    tok = ["--eval-tokenizer", "packaged:smollm2-135m"]
    first = eval_set_batches([str(sets)], "packaged:smollm2-135m", 32)
    again = eval_set_batches([str(sets)], "packaged:smollm2-135m", 32)
    assert sorted(first) == ["manual", "qa"]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first["qa"], again["qa"]))
    result = main(args(run_dir[0], tmp_path / "out", 8, "--eval", str(sets), *tok))
    assert set(result["final_eval_set_loss"]) == {"manual", "qa"}
    assert all(np.isfinite(v) for v in result["final_eval_set_loss"].values())
    assert [set(h["eval_set_loss"]) for h in result["history"]] == [{"manual", "qa"}] * 2
    with pytest.raises(SystemExit, match="needs --eval-tokenizer"):
        main(["--server", "grpc://127.0.0.1:1", *TINY, "--eval", str(sets), "--out", str(tmp_path / "x")])


def test_vocab_map_keeps_the_most_frequent_tokens_and_ignores_minus_100():
    vm = VocabMap([5, 9, 2])
    ids = torch.tensor([[2, 5, 9, 7, 10_000, -100]])
    assert vm(ids).tolist() == [[3, 1, 2, 0, 0, -100]] and vm.size == 4  # kept[i] -> i + 1, the rest UNK


def test_gpt_refuses_ids_outside_its_vocabulary_and_lr_schedule_shape():
    model = GPT(GPTConfig(vocab_size=10, seq_len=8, n_layer=1, n_head=1, n_embd=8))
    assert model(torch.randint(0, 10, (2, 8))).shape == (2, 8, 10)
    with pytest.raises(ValueError, match="token id 12 >= vocab_size 10"):
        model(torch.tensor([[1, 12]]))
    cfg = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(55, cfg) == pytest.approx(0.55)
