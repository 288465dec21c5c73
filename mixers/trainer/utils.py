"""Trainer-side measurements the mixing algorithms ask for, in plain PyTorch.

A *loss function* here is ``loss_fn(model, batch) -> Tensor [B]``: the mean token loss of
each sequence of a batch dict (``input_ids``, ``labels``; labels equal input ids and the
model shifts, -100 marks positions to ignore — see :mod:`mixers.trainer.client`).
:func:`causal_lm_loss` is one for models that map ``input_ids`` to logits.

- ``report``: per-sequence losses of the training batch → ``MixtureStream.report``.
- ``report_eval``: :func:`held_out_losses` over ``MixtureStream.eval_batches`` →
  ``MixtureStream.report_eval`` (``MixtureStream.run_eval`` does both).
- ``report_alignment``: :func:`alignment_scores` → ``MixtureStream.report_alignment``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses [B, L-1] of next-token prediction and the mask of counted positions."""
    target = labels[:, 1:]
    mask = target != -100
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.clamp_min(0).reshape(-1), reduction="none"
    ).view_as(target)
    return loss * mask, mask


def sequence_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each sequence [B] (positions labelled -100 left out)."""
    loss, mask = token_losses(logits, labels)
    return loss.sum(dim=1) / mask.sum(dim=1).clamp_min(1)


def causal_lm_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """``loss_fn`` for a model whose forward maps ``input_ids`` to logits (or an output with ``.logits``)."""
    device = next(model.parameters()).device
    out = model(batch["input_ids"].to(device))
    logits = getattr(out, "logits", out)
    return sequence_losses(logits, batch["labels"].to(device))


@torch.no_grad()
def held_out_losses(
    model: torch.nn.Module, batches: Mapping[str, Iterable[Mapping[str, Any]]], loss_fn: LossFn = causal_lm_loss
) -> dict[str, float]:
    """Mean held-out loss per token for each domain's batches (weighted by the counted tokens)."""
    was_training = model.training
    model.eval()
    try:
        out = {}
        for domain, domain_batches in batches.items():
            total, count = 0.0, 0
            for b in domain_batches:
                per_seq = loss_fn(model, b).double().cpu()
                n = (b["labels"][:, 1:] != -100).sum(dim=1).double()
                total += float((per_seq * n).sum())
                count += int(n.sum())
            if count:
                out[domain] = total / count
        return out
    finally:
        model.train(was_training)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor | None]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def alignment_scores(
    model: torch.nn.Module,
    loss_fn: LossFn,
    domain_batches: Mapping[str, Mapping[str, Any]],
    target_batch: Mapping[str, Any],
) -> dict[str, float]:
    """⟨g_domain, g_target⟩ for each domain: the dot product of the gradient of the mean loss on
    the domain's batch with that on the target batch (DGA). Gradients stay in the trainer; the
    k scalars go to ``MixtureStream.report_alignment``. Parameter ``.grad`` is not touched, so
    it may be called between a backward pass and the optimiser step.
    """
    was_training = model.training
    model.eval()  # no dropout: the measurement should not depend on a random mask
    try:
        target = _grads(model, loss_fn(model, target_batch).mean())
        out = {}
        for domain, batch in domain_batches.items():
            g = _grads(model, loss_fn(model, batch).mean())
            dot = sum(
                float((a.double() * b.double()).sum()) for a, b in zip(g, target) if a is not None and b is not None
            )
            out[domain] = dot
        return out
    finally:
        model.train(was_training)
