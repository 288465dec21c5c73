"""Moved to :mod:`mixers.trainer.client`; this path stays for ``from mixers.client import MixtureStream``."""

from mixers.trainer.client import GROUP_TOKENS, RETRYABLE, STATE_VERSION, MixtureStream, RecycledArrays, train_tensors

__all__ = ["GROUP_TOKENS", "RETRYABLE", "STATE_VERSION", "MixtureStream", "RecycledArrays", "train_tensors"]
