"""The mixer service on Arrow Flight: packed, mixture-weighted batches out; trainer feedback in.

Protocol (every ticket and action body is JSON):

``do_get`` tickets
    ``{"kind": "train", "rank": r, "world": W, "step": s, "steps": n?, "narrow": bool?, "group": k?}``
    streams global steps s, s+1, … (n of them, default unbounded): one record batch per step with
    rank r's ``global_batch / W`` sequences — ``input_ids`` fixed_size_list<int32>[seq_len]
    (with ``narrow``: of the server's token type, uint16 when every id fits, see ``info``),
    ``domain`` int16 (an index into the sorted domain list, which the schema metadata
    ``sluice.domains`` holds as JSON) — and app metadata ``{"step": t, "due": [...]?}``,
    ``due`` naming the measurements the algorithm needs after step t is trained
    (``report_eval``, ``report_alignment``). Rank r gets rows ``[r·B/W, (r+1)·B/W)`` of
    the global batch, so ranks are disjoint and together form it. With ``group`` k > 1 a
    record batch carries up to k consecutive steps, their rows one step after the other: the
    first step is waited for, the others are added only if already made (so a message never
    waits for a step whose feedback the trainer could only send after receiving it); its
    metadata is ``{"step": t, "steps": m, "due": {"t+i": [...]}?}``. Fewer, larger messages cost
    both sides less per token when a rank's share of a step is small.

    ``{"kind": "eval", "domain": d, "max_sequences": n?, "batch_size": b?}`` streams the
    domain's held-out documents (``split = holdout``) in shard order, packed, in batches
    of ``b`` sequences: ``input_ids``, ``domain``, ``n_valid`` (real tokens per row; the
    last row is padded with 0).

``do_action`` types
    ``report`` {step, rank, world, loss_sum: {d: float}, tokens: {d: int}, ref_loss_sum?: {d: float}};
    ``report_eval`` {step, loss: {d: float}}; ``report_alignment`` {step, alignment: {d: float}};
    ``checkpoint`` {step?} → the state JSON; ``status`` {step?} → step, weights (at ``step`` if given), tokens/s per
    domain, connected ranks, what the producer waits for; ``info`` → domains, seq_len, ….

Bad tickets and bodies get a ``FlightServerError`` with a one-line message naming the problem —
never a traceback or a file path: an unexpected error is logged here with its traceback and
the client gets ``<what>: internal server error (<type>)`` — and the server goes on serving.

Limits, checked before a request is used (constants here and in :mod:`mixers.server.engine`):
``MAX_TICKET_BYTES`` (64 KiB) per ticket and ``MAX_ACTION_BYTES`` (1 MiB) per action body,
before parsing; ``MAX_JSON_DEPTH`` (16) levels of nesting; ``MAX_GROUP`` steps a message.
A ``report``'s ``tokens`` of a domain may not exceed that domain's tokens in the rank's slice
of the step (``seq_len`` per sequence; fewer is fine: trainers may mask positions); a report of
a step not produced yet — a trainer re-sending its reports to a server resumed from an older
state — waits up to ``REPORT_WAIT`` (30 s) for it. Only an accepted train ticket or report
fixes the server's world size.

One stream per rank: a train ticket for a rank that has an open train stream waits up to
``CLAIM_WAIT`` (2 s) for that stream to end, then is refused (``rank r already has an open
train stream``). A stream ends when its client cancels it or disconnects (noticed within about
0.5 s), when the server stops, and — for a ticket with ``steps`` — as its last step is sent. So a
``MixtureStream`` that reconnects (after a server restart, after its own stream broke, on
``load_state_dict``) is served, and a second trainer using the same rank is refused. A client
whose machine vanished without closing its connection holds its rank until gRPC notices.

Binding anything but a loopback address requires a token: every call must then carry
``authorization: Bearer <token>``. TLS is on when a certificate and key are given.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from mixers.algorithms.base import FEEDBACK_KINDS
from mixers.checks import check_int, is_int, is_number
from mixers.server.engine import MixerConfig, MixerEngine, MixerFailed, RequestError
from mixers.server.feedback import FeedbackError
from mixers.server.sampler import GlobalBatch

logger = logging.getLogger(__name__)

ACTIONS = {
    "report": "per-domain training loss sums and token counts of one rank for one step",
    "report_eval": "per-domain mean held-out loss at a step",
    "report_alignment": "per-domain gradient-alignment scalars at a step",
    "checkpoint": "the mixer state at the start of a step ({step}); resume with --resume-from",
    "status": "step, weights, tokens/s per domain, connected ranks, awaited feedback",
    "info": "domains, seq_len, global_batch, seed, mixer, world",
}
DEFAULT_EVAL_SEQUENCES = 64
MAX_GROUP = 64  # steps a train message may carry
MAX_ACTION_BYTES = 1 << 20  # an action body larger than this is refused before it is parsed
MAX_TICKET_BYTES = 64 << 10  # likewise a ticket
MAX_JSON_DEPTH = 16  # nesting of arrays and objects in a body or ticket (a `report` has 2)
MAX_MESSAGE = 400  # characters of an error message sent to a client
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+[^\s'\"/\\]*")  # 2+ parts


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen_problem(host: str, port: int, tls: bool) -> str:
    """Why a server could not listen on ``host:port``, found by binding a plain socket there."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except OSError as e:
        return f"cannot resolve the host ({e.strerror or e})"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as e:
            return (e.strerror or str(e)).lower()
    return "gRPC did not start" + (" (are the TLS certificate and key PEM, and a pair?)" if tls else "")


class BearerTokenFactory(flight.ServerMiddlewareFactory):
    """Refuses every call whose ``authorization`` header is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info, headers):
        values = headers.get("authorization", [])
        for v in values:
            if hmac.compare_digest(v.encode() if isinstance(v, str) else bytes(v), self._expected):
                return None
        raise flight.FlightUnauthenticatedError("missing or wrong bearer token")


def _json(raw: bytes | pa.Buffer | None, what: str, limit: int) -> dict[str, Any]:
    """A ticket or action body as a JSON object: at most ``limit`` bytes, nested at most MAX_JSON_DEPTH deep."""
    size = 0 if raw is None else len(raw)
    if size > limit:
        raise RequestError(f"{what}: {size:,} bytes is more than the {limit:,} allowed")
    if isinstance(raw, pa.Buffer):
        raw = raw.to_pybytes()
    too_deep = RequestError(f"{what}: JSON nested more than {MAX_JSON_DEPTH} deep")
    try:
        body = json.loads(raw.decode() if raw else "{}")
    except RecursionError:  # nested deeper than the parser goes
        raise too_deep from None
    except ValueError as e:  # also UnicodeDecodeError, and integers of more than 4300 digits
        raise RequestError(f"{what}: not valid JSON ({e})") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(body, dict):
        raise RequestError(f"{what}: expected a JSON object, got {type(body).__name__}")
    return body


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in parsed JSON (a scalar: 0); stops counting past MAX_JSON_DEPTH."""
    depth, level = 0, [value]
    while depth <= MAX_JSON_DEPTH and (level := [x for x in level if isinstance(x, (dict, list))]):
        depth += 1
        level = [c for x in level for c in (x.values() if isinstance(x, dict) else x)]
    return depth


def _client_error(what: str, e: Exception) -> flight.FlightServerError:
    """The error a client gets for ``e``: a short message, never a traceback or a file path. Errors that
    are not a refusal of the request are logged here with their traceback."""
    if isinstance(e, (RequestError, FeedbackError)):
        msg = str(e)
    elif isinstance(e, MixerFailed):
        msg = f"mixer failed: {e}"
    else:
        logger.warning("%s: unexpected error", what, exc_info=e)
        msg = f"{what}: internal server error ({type(e).__name__}); the server log has the details"
    return flight.FlightServerError(_redact(msg))


def _redact(msg: str) -> str:
    """``msg``'s first line, file paths replaced by ``<path>``, at most MAX_MESSAGE characters."""
    line = _PATH.sub("<path>", msg.strip().split("\n", 1)[0])
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def _get_int(body: dict, key: str, default: int | None = None, lo: int = 0) -> int:
    return check_int(body.get(key, default), f"ticket field `{key}`", lo, error=RequestError)


class MixerServer(flight.FlightServerBase):
    """The Flight service around a :class:`MixerEngine`; listening as soon as it is constructed.

    Args:
        engine: the (started) engine to serve.
        host: bind address; anything but loopback requires ``token``.
        port: TCP port (0: any free port; see :attr:`port`).
        token: shared secret clients send as ``authorization: Bearer <token>``.
        tls_cert: PEM certificate file; with ``tls_key`` turns TLS on.
        tls_key: PEM private key file.
        log_every: seconds between status log lines (0: none).
    """

    def __init__(
        self,
        engine: MixerEngine,
        *,
        host: str = "127.0.0.1",
        port: int = 8815,
        token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        log_every: float = 30.0,
    ) -> None:
        if not is_loopback(host) and not token:
            raise ValueError(
                f"binding {host!r} (not loopback) requires a token: pass --token or set SLUICE_MIXER_TOKEN"
            )
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        tls = None
        if tls_cert is not None:
            tls = [flight.CertKeyPair(cert=Path(tls_cert).read_bytes(), key=Path(tls_key).read_bytes())]
        scheme = "grpc+tls" if tls else "grpc+tcp"
        middleware = {"auth": BearerTokenFactory(token)} if token else None
        bracket = f"[{host}]" if ":" in host else host
        try:
            super().__init__(f"{scheme}://{bracket}:{port}", tls_certificates=tls, middleware=middleware)
        except pa.ArrowException:  # gRPC only says "Server did not start properly"
            raise OSError(
                f"cannot listen on {bracket}:{port}: {_listen_problem(host, port, tls is not None)}"
            ) from None
        self.engine = engine
        self.host = host
        self.scheme = scheme
        d = engine.domains
        L = engine.config.seq_len
        meta = {"sluice.domains": json.dumps(d)}
        self.train_schema = pa.schema([("input_ids", pa.list_(pa.int32(), L)), ("domain", pa.int16())], metadata=meta)
        narrow = pa.from_numpy_dtype(engine.corpus.token_type)
        self.narrow_schema = pa.schema([("input_ids", pa.list_(narrow, L)), ("domain", pa.int16())], metadata=meta)
        self.eval_schema = self.train_schema.append(pa.field("n_valid", pa.int32()))
        self._log_every = log_every
        self._closed = threading.Event()
        self._monitor = threading.Thread(target=self._monitor_loop, name="mixer-monitor", daemon=True)
        self._monitor.start()

    @property
    def location(self) -> str:
        """The URI a client on this machine connects to."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104 - a client address
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"{self.scheme}://{host}:{self.port}"

    # ------------------------------------------------------------------ Flight methods
    def list_actions(self, context):
        return list(ACTIONS.items())

    def do_action(self, context, action):
        kind = action.type
        try:
            body = _json(action.body, kind, MAX_ACTION_BYTES)
            if kind in FEEDBACK_KINDS:
                out = self.engine.feedback(kind, body)
            elif kind == "checkpoint":
                step = body.get("step")
                timeout = body.get("timeout", 30.0)
                if not is_number(timeout) or not 0 <= timeout <= 600:
                    raise RequestError(
                        f"checkpoint: `timeout` must be a number of seconds in [0, 600], got {timeout!r}"
                    )
                out = self.engine.checkpoint(step, timeout=float(timeout))
            elif kind == "status":
                step = body.get("step")
                if step is not None and (not is_int(step) or step < 0):
                    raise RequestError(f"status: `step` must be a step number >= 0, got {step!r}")
                out = self.engine.status(step)
                if out["failed"]:
                    out["failed"] = _redact(out["failed"])
            elif kind == "info":
                out = self.engine.info()
            else:
                raise RequestError(f"unknown action {kind!r}; actions: {', '.join(ACTIONS)}")
            return [flight.Result(json.dumps(out).encode())]
        except flight.FlightError:
            raise
        except Exception as e:
            raise _client_error(kind, e) from None

    def do_get(self, context, ticket):
        try:
            body = _json(ticket.ticket, "ticket", MAX_TICKET_BYTES)
            kind = body.get("kind", "train")
            if kind == "train":
                return self._train_stream(context, body)
            if kind == "eval":
                return self._eval_stream(body)
            raise RequestError(f"ticket `kind` must be 'train' or 'eval', got {kind!r}")
        except flight.FlightError:
            raise
        except Exception as e:
            raise _client_error("ticket", e) from None

    # ------------------------------------------------------------------ streams
    def _train_stream(self, context, body: dict) -> flight.GeneratorStream:
        extra = sorted(set(body) - {"kind", "rank", "world", "step", "steps", "narrow", "group"})
        if extra:
            raise RequestError(f"train ticket: unknown field(s) {extra}")
        rank, world = _get_int(body, "rank", 0), _get_int(body, "world", 1, lo=1)
        start = _get_int(body, "step", 0)
        steps = None if body.get("steps") is None else _get_int(body, "steps", lo=1)
        narrow = body.get("narrow", False)
        if not isinstance(narrow, bool):
            raise RequestError(f"train ticket: `narrow` must be true or false, got {narrow!r}")
        group = _get_int(body, "group", 1, lo=1)
        if group > MAX_GROUP:
            raise RequestError(f"train ticket: `group` must be at most {MAX_GROUP}, got {group}")
        self.engine.check_train(rank, world, start)  # refuse now; the stream claims the rank when it starts
        schema = self.narrow_schema if narrow else self.train_schema
        batches = self._train_batches(context, rank, world, start, steps, schema, group)
        return flight.GeneratorStream(schema, batches)

    def _train_batches(
        self, context, rank: int, world: int, start: int, steps: int | None, schema: pa.Schema, group: int = 1
    ):
        """The messages of a train stream. Claims ``rank`` first (see :meth:`MixerEngine.open_stream`) and
        releases it when the stream ends, or before sending the last step of a stream of ``steps`` steps
        (so a client may ask for the rank again as soon as it has that step)."""
        eng = self.engine
        per = eng.config.global_batch // world
        lo, hi = rank * per, (rank + 1) * per
        claim = None
        try:
            claim = eng.open_stream(rank, world, start)
            t = start
            while steps is None or t < start + steps:
                b = None
                while b is None:
                    if eng.stopped or self._closed.is_set():
                        raise flight.FlightUnavailableError("mixer server is shutting down")
                    if context.is_cancelled():
                        return
                    b = eng.batch(t, rank, timeout=0.5)
                parts = [b]
                room = group if steps is None else min(group, start + steps - t)
                while len(parts) < room:  # the following steps only if they are made already
                    try:
                        nb = eng.batch(t + len(parts), rank, timeout=0.0)
                    except (RequestError, MixerFailed):
                        nb = None  # the next message reports it
                    if nb is None:
                        break
                    parts.append(nb)
                message = self._train_message(parts, t, rank, lo, hi, schema)
                t += len(parts)
                if steps is not None and t >= start + steps:
                    eng.stream_closed(rank, claim)
                    claim = None
                yield message
        except flight.FlightError:
            raise
        except Exception as e:
            raise _client_error("train stream", e) from None
        finally:
            if claim is not None:
                eng.stream_closed(rank, claim)

    def _train_message(
        self, parts: list[GlobalBatch], t: int, rank: int, lo: int, hi: int, schema: pa.Schema
    ) -> tuple[pa.RecordBatch, bytes]:
        """Rows ``[lo, hi)`` of steps ``t, t+1, …`` (one per part) as one record batch and its metadata;
        the steps count as served to ``rank``."""
        eng, widen = self.engine, schema is self.train_schema
        arrays = [p.rows(lo, hi, widen) for p in parts]
        if len(parts) == 1:
            rb = pa.RecordBatch.from_arrays(list(arrays[0]), schema=schema)
        else:
            rb = pa.RecordBatch.from_arrays([pa.concat_arrays([a[c] for a in arrays]) for c in (0, 1)], schema=schema)
        dues = {}
        for i, p in enumerate(parts):
            eng.served(rank, t + i, p.domains[lo:hi])
            if due := eng.due(t + i):
                dues[t + i] = due
        meta: dict[str, Any] = {"step": t}
        if len(parts) > 1:
            meta["steps"] = len(parts)
            if dues:
                meta["due"] = {str(k): v for k, v in dues.items()}
        elif dues:
            meta["due"] = dues[t]
        return rb, json.dumps(meta).encode()

    def _eval_stream(self, body: dict) -> flight.GeneratorStream:
        extra = sorted(set(body) - {"kind", "domain", "max_sequences", "batch_size"})
        if extra:
            raise RequestError(f"eval ticket: unknown field(s) {extra}")
        domain = body.get("domain")
        if not isinstance(domain, str):
            raise RequestError(f"eval ticket: `domain` must be a domain name, got {domain!r}")
        n = _get_int(body, "max_sequences", DEFAULT_EVAL_SEQUENCES, lo=1)
        bs = _get_int(body, "batch_size", 8, lo=1)
        toks, valid = self.engine.holdout(domain, n)
        did = self.engine.domains.index(domain)
        L = self.engine.config.seq_len
        batches = []
        for a in range(0, len(toks), bs):
            rows = toks[a : a + bs]
            batches.append(
                pa.RecordBatch.from_arrays(
                    [
                        pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), L),
                        pa.array(np.full(len(rows), did, np.int16)),
                        pa.array(valid[a : a + bs]),
                    ],
                    schema=self.eval_schema,
                )
            )
        return flight.GeneratorStream(self.eval_schema, iter(batches))

    # ------------------------------------------------------------------ lifecycle
    def _monitor_loop(self) -> None:
        last_log = time.monotonic()
        pool = pa.default_memory_pool()
        while not self._closed.wait(1.0):
            self.engine.sample_rates()
            pool.release_unused()  # hand freed window buffers back to the OS (mimalloc/jemalloc keep them)
            if self._log_every and time.monotonic() - last_log >= self._log_every:
                last_log = time.monotonic()
                logger.info("%s", status_line(self.engine.status()))

    def close(self) -> None:
        """Stop producing, end open streams, shut the server down (call from outside a Flight method)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.engine.stop()
        self.shutdown()


def status_line(s: dict[str, Any]) -> str:
    """One log line from a `status` dict."""
    total = sum(s["tokens_per_s"].values())
    per = ", ".join(f"{d} {r / 1e6:.2f}M" for d, r in s["tokens_per_s"].items())
    w = " ".join(f"{d}={x:.3f}" for d, x in s["weights"].items())
    line = (
        f"step {s['step']} (produced {s['produced_through']}, closed {s['closed_through']}) | weights {w} | "
        f"{total / 1e6:.2f}M tok/s ({per}) | ranks {s['connected_ranks']}/{s['world']}"
    )
    if s.get("train_loss"):
        line += " | loss " + " ".join(f"{d}={x:.3f}" for d, x in s["train_loss"].items())
    if s.get("awaiting"):
        a = s["awaiting"]
        line += f" | waiting {a['seconds']}s for {a['kinds']} of step {a['step']} (ranks {a['missing_ranks']})"
    return line


def start_server(
    out: str,
    config: MixerConfig | None = None,
    *,
    state: dict[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_every: float = 30.0,
    readers: int = 4,
) -> MixerServer:
    """Index ``out``, start the producer, listen. Stop it with :meth:`MixerServer.close`."""
    if not is_loopback(host) and not token:  # refuse before indexing anything
        raise ValueError(f"binding {host!r} (not loopback) requires a token: pass --token or set SLUICE_MIXER_TOKEN")
    engine = MixerEngine(out, config or MixerConfig(), state=state, readers=readers)
    try:
        server = MixerServer(
            engine, host=host, port=port, token=token, tls_cert=tls_cert, tls_key=tls_key, log_every=log_every
        )
    except BaseException:
        engine.stop()
        raise
    engine.start()
    return server
