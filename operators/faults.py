"""Fault injection, for testing how runs survive failures (resume, quarantine, retries)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from operators.base import Operator, register


class InjectedFault(RuntimeError):
    """Raised by ``inject_fault``; never raised by real operators."""


@register("inject_fault")
class InjectFault(Operator):
    """Fail on purpose: raise (or kill the worker process) on batches that meet a condition.

    Args:
        when_file: only fail while this file exists (lets a test "repair" the fault between runs).
        match: only fail on batches where some active document contains this substring.
        mode: ``raise`` an exception, or ``exit`` the worker process abruptly.
    """

    def __init__(
        self,
        *,
        when_file: str | None = None,
        match: str | None = None,
        mode: Literal["raise", "exit"] = "raise",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.when_file = when_file
        self.match = match
        self.mode = mode

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        if self.when_file is not None and not Path(self.when_file).exists():
            return batch
        if self.match is not None:
            texts = batch.column("text").to_pylist()
            if not any(a and t and self.match in t for a, t in zip(active, texts)):
                return batch
        if self.mode == "exit":
            os._exit(17)
        raise InjectedFault(f"injected fault in stage {self.stage!r} on a batch of {len(batch)} rows")
