"""The trainer side: `MixtureStream`, a torch IterableDataset over the mixer server's batches.

Each rank makes one stream::

    stream = MixtureStream("grpc://127.0.0.1:8815", rank=rank, world_size=world)
    for batch in stream:                       # prefetched on a background thread
        logits = model(batch["input_ids"])     # int64 [B_local, seq_len]
        loss = per_sequence_loss(logits, batch["labels"])
        stream.report(batch["step"], loss, batch["domain"])    # feedback, one call
        if batch["step"] % 1000 == 0:
            torch.save({"model": ..., "data": stream.state_dict()}, path)

Labels convention: ``labels`` equals ``input_ids`` (a copy), as in Hugging Face causal
LMs — the model shifts (predicts token i+1 from positions ≤ i), so a sequence yields
``seq_len - 1`` predicted tokens. Packed sequences carry the documents' EOS tokens; no
position is padding, so there is no -100 in training labels (eval batches pad their last
row and mark it with -100).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import torch
from torch.utils.data import IterableDataset, get_worker_info

logger = logging.getLogger(__name__)

RETRYABLE = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightCancelledError, ConnectionError)
_END = object()
STATE_VERSION = 1
GROUP_TOKENS = 1 << 17  # tokens a train message aims for when the stream groups steps


class RecycledArrays:
    """int64 arrays for batch tensors, reused once the trainer no longer holds them.

    A tensor made by ``torch.from_numpy`` keeps its array alive until the tensor and every
    view of it are gone, so an array that only this pool references is free to overwrite.
    Reusing it spares the allocator: batch-sized arrays freed and allocated every step are
    returned to the kernel and faulted back in page by page (what that costs a client: the mixer
    server section of BENCHMARKS.md). A request smaller than a free pooled array gets a
    view of its first rows (messages of a grouped stream vary in steps). When every fitting
    array is in use (the trainer keeps batches) and the pool is full, a fresh, unpooled array
    is returned.

    Args:
        capacity: arrays kept; enough for the prefetch queue plus the batches the trainer holds.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._arrays: list[np.ndarray] = []
        # what a free pooled array reads as on this interpreter (the same expression as the checks)
        self._free_refs = _refs([np.empty(0)], 0)
        self._rows = 0

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """An int64 array of ``shape`` that nothing else references (contents undefined): a pooled
        array with at least ``shape[0]`` rows, or the first rows of one (the view holds it)."""
        arrays, rows = self._arrays, shape[0]
        for i in range(len(arrays)):
            if arrays[i].shape[1:] == shape[1:] and arrays[i].shape[0] >= rows and _refs(arrays, i) == self._free_refs:
                return arrays[i] if arrays[i].shape[0] == rows else arrays[i][:rows]
        # messages of a grouped stream vary in rows: pool arrays as large as the largest seen
        self._rows = max(self._rows, rows)
        out = np.empty((self._rows, *shape[1:]), np.int64)
        if len(arrays) < self.capacity:
            arrays.append(out)
        elif arrays:  # make room: replace one that is free, if any
            for i in range(len(arrays)):
                if _refs(arrays, i) == self._free_refs:
                    arrays[i] = out
                    break
        return out if self._rows == rows else out[:rows]


def _refs(arrays: list[np.ndarray], i: int) -> int:
    """References to ``arrays[i]``: the list's, the call's own, and one per holder (a tensor, a view)."""
    return sys.getrefcount(arrays[i])


def train_tensors(tokens: np.ndarray, pool: RecycledArrays | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``labels`` (a copy) as int64 tensors from token ids ``[n, seq_len]`` of any integer type.

    numpy, not torch, does the copies: torch's intra-op threads would compete with the trainer's.
    """
    if pool is None:
        ids = tokens.astype(np.int64)
        labels = ids.copy()
    else:
        ids, labels = pool.take(tokens.shape), pool.take(tokens.shape)
        np.copyto(ids, tokens, casting="unsafe")
        np.copyto(labels, ids)
    return torch.from_numpy(ids), torch.from_numpy(labels)


class MixtureStream(IterableDataset):
    """Mixture-weighted packed batches for one rank, from a Sluice mixer server.

    Yields dicts: ``input_ids`` int64 [B_local, seq_len], ``labels`` (equal to
    ``input_ids``; see the module docstring), ``domain`` int64 [B_local] (ids into
    :attr:`domains`), ``step`` (the global step) and ``due`` (the measurements the
    server's algorithm needs once this step is trained: ``"report_eval"`` → call
    :meth:`run_eval`, ``"report_alignment"`` → :meth:`report_alignment` with
    :func:`mixers.trainer.utils.alignment_scores`). B_local = global_batch / world_size.

    A background thread keeps up to ``prefetch`` batches ready. If the server goes away
    (restart, network), the thread reconnects with exponential backoff for up to
    ``reconnect_timeout`` seconds and continues at the next step; to a server that is a
    new process it first re-sends the feedback it sent recently, so feedback that the
    old server had not checkpointed is not lost. Iterate it directly or through
    ``DataLoader(stream, batch_size=None, num_workers=0)``; worker processes would each
    open their own stream.

    Args:
        location: the server URI (``grpc://host:port``, ``grpc+tls://host:port``).
        rank: this trainer's rank.
        world_size: number of ranks; must divide the server's global batch.
        token: bearer token if the server requires one.
        tls_root_certs: PEM bytes (or a path) of the CA that signed the server's certificate.
        prefetch: messages buffered ahead of the trainer (a message holds up to ``group`` steps).
        group: steps a message may carry (the server adds the following steps only when they
            are ready, so feedback-driven mixers never wait on it). None: enough steps for about
            128K tokens a message, at most ``prefetch`` — per-message costs dominate when a rank's
            share of a step is small.
        start_step: first global step (``load_state_dict`` sets it).
        max_steps: stop after this many steps (None: never).
        reconnect_timeout: seconds to keep retrying an unreachable server before raising.
        call_timeout: seconds an action call may take.
    """

    def __init__(
        self,
        location: str = "grpc://127.0.0.1:8815",
        *,
        rank: int = 0,
        world_size: int = 1,
        token: str | None = None,
        tls_root_certs: bytes | str | None = None,
        prefetch: int = 4,
        group: int | None = None,
        start_step: int = 0,
        max_steps: int | None = None,
        reconnect_timeout: float = 300.0,
        call_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        if group is not None and group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.location = location
        self.rank, self.world_size = rank, world_size
        self._headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        if isinstance(tls_root_certs, str):
            with open(tls_root_certs, "rb") as f:
                tls_root_certs = f.read()
        self._tls = tls_root_certs
        self.prefetch = prefetch
        self.group = group
        self.max_steps = max_steps
        self.reconnect_timeout = reconnect_timeout
        self.call_timeout = call_timeout
        self._next_step = start_step  # the next step the trainer will consume
        self._client: flight.FlightClient | None = None
        self._checked: flight.FlightClient | None = None  # the client whose server `info` we hold
        self._instance: str | None = None
        self._info: dict[str, Any] | None = None
        self._sent: deque[tuple[str, dict]] = deque(maxlen=512)
        self._held_out: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._reader: flight.FlightStreamReader | None = None
        self._arrays = RecycledArrays(2 * (prefetch + 4))  # resized to the group by `_group`

    # ------------------------------------------------------------------ connection
    def _options(self, timeout: float | None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=self._headers, timeout=timeout)

    def _connect(self) -> flight.FlightClient:
        with self._lock:
            if self._client is None:
                kw = {"tls_root_certs": self._tls} if self._tls else {}
                self._client = flight.FlightClient(self.location, **kw)
            return self._client

    def _drop_client(self) -> None:
        # forget, do not close: another thread may be mid-call on it; the channel closes when collected
        with self._lock:
            self._client = None

    def _retrying(self, fn, what: str):
        """Run ``fn(client)``; on a retryable error reconnect with backoff until ``reconnect_timeout``."""
        delay, t0 = 0.05, time.monotonic()
        while True:
            try:
                client = self._connect()
                out = fn(client)
                self._check_instance(client)
                return out
            except RETRYABLE as e:
                if time.monotonic() - t0 > self.reconnect_timeout:
                    raise
                logger.info("mixer %s: %s; retrying in %.2fs", what, type(e).__name__, delay)
                self._drop_client()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _action_once(self, client: flight.FlightClient, kind: str, body: dict | None) -> Any:
        payload = json.dumps(body or {}).encode()
        results = list(client.do_action(flight.Action(kind, payload), self._options(self.call_timeout)))
        return json.loads(results[0].body.to_pybytes()) if results else None

    def _action(self, kind: str, body: dict | None = None) -> Any:
        return self._retrying(lambda c: self._action_once(c, kind, body), kind)

    def _check_instance(self, client: flight.FlightClient, force: bool = False) -> None:
        """After (re)connecting: learn the server; if it is a new process, re-send recent feedback.

        Runs on every new client and every stream (re)open (``force``): a gRPC channel
        reconnects by itself, so a reused client may already talk to a restarted server.
        """
        with self._lock:
            if not force and self._info is not None and self._checked is client:
                return
        info = self._action_once(client, "info", None)
        with self._lock:
            new = self._instance is not None and info["instance"] != self._instance
            self._info, self._instance, self._checked = info, info["instance"], client
            replay = list(self._sent) if new else []
        for kind, body in replay:  # duplicates and closed steps are refused; that is fine
            with contextlib.suppress(flight.FlightServerError):
                self._action_once(client, kind, body)
        if replay:
            logger.info("mixer: reconnected to a new server; re-sent %d feedback messages", len(replay))

    @property
    def info(self) -> dict[str, Any]:
        """The server's `info`: domains, seq_len, global_batch, seed, mixer, …"""
        if self._info is None:
            self._action("info")
        return self._info

    @property
    def domains(self) -> list[str]:
        return self.info["domains"]

    @property
    def seq_len(self) -> int:
        return self.info["seq_len"]

    # ------------------------------------------------------------------ batches
    def __iter__(self) -> Iterator[dict[str, Any]]:
        wi = get_worker_info()
        if wi is not None and wi.num_workers > 1:
            raise RuntimeError(
                "MixtureStream prefetches on its own thread and must not be split across DataLoader workers; "
                "use DataLoader(stream, batch_size=None, num_workers=0) or iterate it directly"
            )
        self._start_reader(self._next_step)
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                for batch in item:  # the steps of one message
                    self._next_step = batch["step"] + 1
                    yield batch
        finally:
            self._stop_reader()

    def _start_reader(self, step: int) -> None:
        self._stop_reader()
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._read_loop, args=(step, self._queue), daemon=True)
        self._thread.start()

    def _stop_reader(self) -> None:
        self._stop.set()
        reader = self._reader
        if reader is not None:
            with contextlib.suppress(flight.FlightError, pa.ArrowException):  # already finished
                reader.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            while self._thread.is_alive():  # unblock a put() on a full queue
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                self._thread.join(timeout=0.1)
        self._thread = None

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read_loop(self, step: int, q: queue.Queue) -> None:
        end = None if self.max_steps is None else step + self.max_steps
        delay, failing_since = 0.05, None
        while not self._stop.is_set() and (end is None or step < end):
            try:
                client = self._connect()
                self._check_instance(client, force=True)
                group = self._group()
                # narrow: token ids in the server's own type (uint16 for vocabularies up to 64K), half the bytes
                ticket = {"kind": "train", "rank": self.rank, "world": self.world_size, "step": step, "narrow": True}
                ticket["group"] = group
                if end is not None:
                    ticket["steps"] = end - step
                reader = client.do_get(flight.Ticket(json.dumps(ticket).encode()), self._options(None))
                self._reader = reader
                while not self._stop.is_set() and (end is None or step < end):
                    try:
                        chunk = reader.read_chunk()
                    except StopIteration:
                        break
                    meta = json.loads(chunk.app_metadata.to_pybytes())
                    if meta["step"] != step:
                        raise RuntimeError(f"mixer sent step {meta['step']}, expected {step}")
                    items = self._split(chunk.data, step, meta)
                    if not self._put(q, items):
                        return
                    step += len(items)
                    delay, failing_since = 0.05, None
                if end is not None and step >= end:
                    break
                if not self._stop.is_set():  # a train stream only ends when the server goes away
                    raise flight.FlightUnavailableError("mixer stream ended early")
            except RETRYABLE as e:
                if self._stop.is_set():
                    return
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.reconnect_timeout:
                    self._put(q, e)
                    return
                logger.info("mixer stream (rank %d): %s; reconnecting in %.2fs", self.rank, type(e).__name__, delay)
                self._drop_client()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except BaseException as e:
                if not self._stop.is_set():
                    self._put(q, e)
                return
            finally:
                self._reader = None
        self._put(q, _END)

    def _group(self) -> int:
        """Steps per message: ``group``, or enough for ~128K tokens (at most ``prefetch``). Sizes the array
        pool to two arrays per step buffered (the queue's messages, the one being filled) plus a few
        batches the trainer still holds."""
        if self.group is not None:
            n = self.group
        else:
            per_step = self.info["global_batch"] // self.world_size * self.info["seq_len"]
            n = max(1, min(self.prefetch, GROUP_TOKENS // max(1, per_step)))
        self._arrays.capacity = 2 * (self.prefetch * n + 4)
        return n

    def _split(self, data: pa.RecordBatch, step: int, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """A message's steps as batches: ``meta["steps"]`` equal slices of its rows, one after the other."""
        n = int(meta.get("steps", 1))
        if n < 1 or data.num_rows % n:
            raise RuntimeError(f"mixer sent {data.num_rows} rows for {n} steps")
        whole, due = self._convert(data, step, self._arrays), meta.get("due")
        if n == 1:
            whole["due"] = due or []
            return [whole]
        per, items = data.num_rows // n, []
        for i in range(n):  # views of the message's tensors: its arrays are recycled once all are dropped
            rows = slice(i * per, (i + 1) * per)
            item = {k: whole[k][rows] for k in ("input_ids", "labels", "domain")}
            item["step"], item["due"] = step + i, (due or {}).get(str(step + i), [])
            items.append(item)
        return items

    @staticmethod
    def _convert(data: pa.RecordBatch, step: int, pool: RecycledArrays | None = None) -> dict[str, Any]:
        col = data.column(0)
        ids, labels = train_tensors(col.flatten().to_numpy().reshape(len(col), col.type.list_size), pool)
        dom = data.column(1).to_numpy().astype(np.int64)
        return {"input_ids": ids, "labels": labels, "domain": torch.from_numpy(dom), "step": step}

    def close(self) -> None:
        """Stop the prefetch thread and close the connection."""
        self._stop_reader()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ feedback
    def _domain_names(self, domains: Any) -> list[str]:
        names = self.domains
        if isinstance(domains, torch.Tensor):
            domains = domains.tolist()
        return [names[d] if not isinstance(d, str) else d for d in np.asarray(domains, dtype=object).tolist()]

    def report(
        self,
        step: int,
        per_sequence_losses: Any,
        domains: Any,
        tokens_per_sequence: int | Sequence[int] | None = None,
        reference_losses: Any = None,
    ) -> dict[str, Any]:
        """Send this rank's training loss for ``step``, summed per domain, in one call.

        Args:
            step: the global step of the batch the losses are for.
            per_sequence_losses: [B] mean loss per sequence, or [B, T] per-token losses
                (summed over T, T tokens each).
            domains: the batch's ``domain`` (ids) or a list of domain names.
            tokens_per_sequence: tokens each mean covers (default ``seq_len - 1``, the
                predicted positions under this module's labels convention).
            reference_losses: the same shape as ``per_sequence_losses``, from a reference
                model on the same sequences (DoReMi's excess loss); sent as ``ref_loss_sum``.
        """
        names = self._domain_names(domains)
        loss_sum, tokens = self._per_domain_sums(per_sequence_losses, names, tokens_per_sequence)
        body = {"step": int(step), "rank": self.rank, "world": self.world_size, "loss_sum": loss_sum, "tokens": tokens}
        if reference_losses is not None:
            body["ref_loss_sum"] = self._per_domain_sums(reference_losses, names, tokens_per_sequence)[0]
        return self._send("report", body)

    def _per_domain_sums(
        self, losses: Any, names: list[str], tokens_per_sequence: int | Sequence[int] | None
    ) -> tuple[dict[str, float], dict[str, int]]:
        loss = torch.as_tensor(losses).detach().to("cpu", torch.float64)
        if loss.ndim == 2:
            n_tok = np.full(loss.shape[0], loss.shape[1], np.int64)
            sums = loss.sum(dim=1).numpy()
        elif loss.ndim == 1:
            default = self.seq_len - 1
            tps = default if tokens_per_sequence is None else tokens_per_sequence
            n_tok = np.broadcast_to(np.asarray(tps, np.int64), loss.shape).copy()
            sums = loss.numpy() * n_tok
        else:
            raise ValueError(f"per-sequence losses must be [B] or [B, T], got shape {tuple(loss.shape)}")
        if len(names) != len(sums):
            raise ValueError(f"{len(sums)} losses but {len(names)} domains")
        loss_sum: dict[str, float] = {}
        tokens: dict[str, int] = {}
        for d, s, n in zip(names, sums.tolist(), n_tok.tolist()):
            loss_sum[d] = loss_sum.get(d, 0.0) + s
            tokens[d] = tokens.get(d, 0) + n
        return loss_sum, tokens

    def report_eval(self, step: int, losses: dict[str, float]) -> dict[str, Any]:
        """Send per-domain mean held-out loss at ``step`` (once per step, from one rank)."""
        return self._send("report_eval", {"step": int(step), "loss": {d: float(x) for d, x in losses.items()}})

    def report_alignment(self, step: int, values: dict[str, float]) -> dict[str, Any]:
        """Send per-domain alignment scalars (e.g. ⟨g_domain, g_target⟩) at ``step`` (once, from one rank)."""
        body = {"step": int(step), "alignment": {d: float(x) for d, x in values.items()}}
        return self._send("report_alignment", body)

    def _send(self, kind: str, body: dict) -> dict[str, Any]:
        out = self._action(kind, body)
        with self._lock:
            self._sent.append((kind, body))
        return out

    # ------------------------------------------------------------------ eval, status, state
    def eval_batches(self, domain: str, batch_size: int = 8, max_sequences: int = 64) -> Iterator[dict[str, Any]]:
        """Held-out batches of ``domain`` (packed from the `holdout` split, same every call).

        Yields ``input_ids``, ``labels`` (-100 on the padded tail of the last row), ``domain``, ``n_valid``.
        """
        ticket = {"kind": "eval", "domain": domain, "batch_size": batch_size, "max_sequences": max_sequences}
        table = self._retrying(
            lambda c: c.do_get(flight.Ticket(json.dumps(ticket).encode()), self._options(self.call_timeout)).read_all(),
            "eval",
        )
        for rb in table.to_batches():
            out = self._convert(rb, -1)
            del out["step"]
            n_valid = torch.from_numpy(rb.column(2).to_numpy().astype(np.int64))
            pos = torch.arange(out["labels"].shape[1])
            out["labels"][pos[None, :] >= n_valid[:, None]] = -100
            out["n_valid"] = n_valid
            yield out

    def held_out(self, domain: str, batch_size: int = 8, max_sequences: int = 64) -> list[dict[str, Any]]:
        """:meth:`eval_batches` as a list, fetched once per (domain, sizes) and kept (the holdout does not change)."""
        key = (domain, batch_size, max_sequences)
        if key not in self._held_out:
            self._held_out[key] = list(self.eval_batches(domain, batch_size, max_sequences))
        return self._held_out[key]

    def run_eval(
        self,
        step: int,
        model: torch.nn.Module,
        loss_fn: Any = None,
        *,
        batch_size: int = 8,
        max_sequences: int = 32,
        report: bool = True,
    ) -> dict[str, float]:
        """Per-domain mean held-out loss of ``model`` after ``step`` on the server's holdout batches; sent
        with :meth:`report_eval` unless ``report=False``. Domains without held-out data are left out.

        Args:
            loss_fn: ``loss_fn(model, batch) -> [B]`` mean loss per sequence
                (default :func:`mixers.trainer.utils.causal_lm_loss`).
        """
        from mixers.trainer.utils import causal_lm_loss, held_out_losses

        batches = {}
        for d in self.domains:
            try:
                batches[d] = self.held_out(d, batch_size, max_sequences)
            except flight.FlightServerError as e:
                logger.warning("no held-out batches for %r: %s", d, e)
        losses = held_out_losses(model, batches, loss_fn or causal_lm_loss)
        if report:
            self.report_eval(step, losses)
        return losses

    def status(self, step: int | None = None) -> dict[str, Any]:
        """The server's status; its ``weights`` are those in force at ``step`` when given."""
        return self._action("status", None if step is None else {"step": int(step)})

    def checkpoint(self, step: int | None = None) -> dict[str, Any]:
        """The server state at the start of ``step`` (default: this stream's next step)."""
        return self._action("checkpoint", {"step": self._next_step if step is None else int(step)})

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is (the next step it will consume) and the server state at that step.

        Save it with the model checkpoint. To continue: ``load_state_dict`` it into a new
        stream and, if the server restarts too, start it with ``--resume-from`` a file
        holding this dict (or its ``"server"`` part).
        """
        return {
            "version": STATE_VERSION,
            "next_step": self._next_step,
            "rank": self.rank,
            "world_size": self.world_size,
            "server": self.checkpoint(self._next_step),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next iteration starts at its ``next_step``."""
        if state.get("version", 1) > STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')} is newer than this code's {STATE_VERSION}")
        self._next_step = int(state["next_step"])
        if self._thread is not None:
            self._start_reader(self._next_step)
