"""Moved to :mod:`mixers.trainer.utils`; this path stays for ``from mixers.trainer_utils import ...``."""

from mixers.trainer.utils import (
    LossFn,
    alignment_scores,
    causal_lm_loss,
    held_out_losses,
    sequence_losses,
    token_losses,
)

__all__ = ["LossFn", "alignment_scores", "causal_lm_loss", "held_out_losses", "sequence_losses", "token_losses"]
