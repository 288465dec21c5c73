"""Fault injection, for testing how runs survive failures (resume, quarantine, retries)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from operators.base import Operator, register


class InjectedFault(RuntimeError):
    """Raised by ``inject_fault``; never raised by real operators."""


@register("inject_fault")
class InjectFault(Operator):
    """Fail on purpose: raise, kill the worker process, or stall, on batches that meet a condition.

    Args:
        when_file: only fail while this file exists (lets a test "repair" the fault between runs).
        match: only fail on batches where some active document contains this substring.
        mode: ``raise`` an exception; ``exit`` the worker process abruptly (Ray sees a dead
            worker and retries the task); ``stall``: sleep while ``when_file`` exists, after
            creating ``<when_file>.stalled`` (a test kills the driver meanwhile).
        once_file: fire only once across all workers and retries: the call that creates this
            file (atomically) fails, every later call passes. With ``mode: exit`` this kills one
            worker mid-stage and lets Ray's retry succeed. The file records the failing pid.
    """

    def __init__(
        self,
        *,
        when_file: str | None = None,
        match: str | None = None,
        mode: Literal["raise", "exit", "stall"] = "raise",
        once_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode == "stall" and when_file is None:
            raise ValueError("inject_fault: mode 'stall' needs `when_file` (it stalls while that file exists)")
        self.when_file = when_file
        self.match = match
        self.mode = mode
        self.once_file = once_file

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        if self.when_file is not None and not Path(self.when_file).exists():
            return batch
        if self.match is not None:
            texts = batch.column("text").to_pylist()
            if not any(a and t and self.match in t for a, t in zip(active, texts)):
                return batch
        if self.once_file is not None and not _claim(self.once_file):
            return batch
        if self.mode == "exit":
            os._exit(17)
        if self.mode == "stall":
            Path(f"{self.when_file}.stalled").write_text(str(os.getpid()))
            while Path(self.when_file).exists():
                time.sleep(0.1)
            return batch
        raise InjectedFault(f"injected fault in stage {self.stage!r} on a batch of {len(batch)} rows")


def _claim(path: str) -> bool:
    """Create ``path`` if it does not exist; True for the one caller that created it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True
