"""Generation backends for ``rephrase``: local transformers, any OpenAI-compatible endpoint, vLLM.

A backend turns chat requests into completions and never raises for one bad request: a
request that fails (after retries, for HTTP) comes back as a :class:`Result` with ``error``
set, so the operator can record it in ``removed/`` and go on with the rest of the batch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying (rate limited, server errors); other 4xx are final
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by every backend; ``str()`` names them (``t0.5_p0.9_n512_s0``).

    ``temperature`` 0 means greedy decoding. ``seed`` is the base of every request's seed.
    """

    temperature: float = 0.5
    top_p: float = 0.9
    max_new_tokens: int = 512
    seed: int = 0

    def __str__(self) -> str:
        return f"t{self.temperature:g}_p{self.top_p:g}_n{self.max_new_tokens}_s{self.seed}"

    def request_seed(self, key: str) -> int:
        """A per-request seed: a pure function of (seed, request key), so reruns sample the same."""
        digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Request:
    """One chat completion to make. ``key`` is stable (``<parent_id>/<style>/<chunk>``)."""

    key: str
    messages: tuple[dict[str, str], ...]
    seed: int


@dataclass
class Result:
    """A completion: its text, tokens generated, whether it stopped on its own, or an error."""

    text: str = ""
    n_tokens: int = 0
    finished: bool = True
    error: str | None = None


@dataclass
class Counters:
    """What a backend did, summed over calls: the manifest's per-backend generation record."""

    requests: int = 0
    tokens_in: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0
    errors: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: float) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def drain(self) -> dict[str, float]:
        """The counts since the last drain (non-zero only), then reset."""
        with self.lock:
            names = ("requests", "tokens_in", "tokens_generated", "seconds", "errors", "retries")
            out = {k: getattr(self, k) for k in names if getattr(self, k)}
            for k in names:
                setattr(self, k, type(getattr(self, k))(0))
        if "seconds" in out:
            out["seconds"] = round(out["seconds"], 3)
        return out


class Endpoint(BaseModel):
    """``endpoint:`` of an ``openai`` backend stage: where and how hard to call.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the model name the server expects (for ``transformers serve``: the folder it serves).
        api_key_env: environment variable holding the API key (sent as a Bearer token if set).
        concurrency: requests in flight at once, per worker.
        max_retries: retries after the first attempt on timeouts, connection errors, 408/409/429/5xx.
        backoff_s: first retry delay; doubles each retry (with up to 10% jitter), or the server's Retry-After.
        max_backoff_s: cap on one retry delay.
        timeout_s: read timeout of one attempt (seconds without a byte from the server).
        connect_timeout_s: connect timeout of one attempt.
        qps: at most this many requests started per second, per worker (null: no limit).
    """

    model_config = ConfigDict(extra="forbid")
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1, le=1024)
    max_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    qps: float | None = Field(None, gt=0)


class RateLimiter:
    """Start at most ``qps`` calls per second across threads (evenly spaced; ``None`` = no limit)."""

    def __init__(self, qps: float | None) -> None:
        self.interval = 0.0 if qps is None else 1.0 / qps
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class OpenAIBackend:
    """Chat completions from any OpenAI-compatible endpoint (vLLM, llama.cpp, ``transformers serve``).

    ``requests`` (a plain HTTP client) in a thread pool of ``concurrency``; every attempt waits
    for the rate limiter; timeouts, connection errors and retryable statuses are retried with
    exponential backoff; a request that still fails returns a :class:`Result` whose ``error``
    names the last failure and the number of attempts. Tokens generated come from the
    response's ``usage.completion_tokens`` (else from ``count_tokens``).
    """

    name = "openai"

    def __init__(self, endpoint: Endpoint, sampling: Sampling, count_tokens) -> None:
        import os

        self.endpoint = endpoint
        self.sampling = sampling
        self.count_tokens = count_tokens
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get(endpoint.api_key_env)
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.limiter = RateLimiter(endpoint.qps)
        self.pool = ThreadPoolExecutor(endpoint.concurrency, thread_name_prefix="rephrase-http")
        self.local = threading.local()
        self.counters = Counters()
        self.jitter = random.Random(sampling.seed)  # only spreads retries; never affects outputs

    @property
    def generator(self) -> str:
        return f"openai:{self.endpoint.model}@{self.endpoint.base_url}"

    def generate(self, requests: list[Request]) -> list[Result]:
        return list(self.pool.map(self.one, requests))

    def _session(self):
        s = getattr(self.local, "session", None)
        if s is None:
            import requests

            s = self.local.session = requests.Session()
        return s

    def _delay(self, retry: int, retry_after: float | None) -> float:
        base = self.endpoint.backoff_s * (2 ** (retry - 1)) * (1 + 0.1 * self.jitter.random())
        if retry_after is not None:
            base = max(base, retry_after)
        return min(base, self.endpoint.max_backoff_s)

    def one(self, req: Request) -> Result:
        """One request with retries; never raises."""
        import requests

        s, ep = self.sampling, self.endpoint
        body: dict[str, Any] = {
            "model": ep.model,
            "messages": list(req.messages),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
            "seed": req.seed,
            "stream": False,
        }
        last, retry_after = "", None
        attempts = ep.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                self.counters.add(retries=1)
                time.sleep(self._delay(attempt, retry_after))
                retry_after = None
            self.limiter.wait()
            try:
                resp = self._session().post(
                    self.url, json=body, headers=self.headers, timeout=(ep.connect_timeout_s, ep.timeout_s)
                )
            except requests.Timeout:
                last = f"timed out (no response within {ep.timeout_s:g}s)"
                continue
            except requests.ConnectionError as e:
                last = f"connection error: {type(e).__name__}"
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {resp.text[:200]!r}"
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                continue
            if resp.status_code != 200:
                return Result(error=f"HTTP {resp.status_code} from {self.url} (not retried): {resp.text[:200]!r}")
            return self._parse(resp)
        return Result(error=f"{last}; gave up after {attempts} attempt{'s' if attempts > 1 else ''} to {self.url}")

    def _parse(self, resp) -> Result:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            finish = choice.get("finish_reason")
            usage = data.get("usage") or {}
            n = usage.get("completion_tokens")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return Result(error=f"malformed response from {self.url} ({type(e).__name__}): {resp.text[:200]!r}")
        if not isinstance(n, int):
            n = self.count_tokens([text])[0]
        return Result(text=text, n_tokens=n, finished=finish != "length")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class TransformersBackend:
    """Local generation with transformers: the model's chat template, left-padded batches.

    Prompts are sorted by length and generated ``batch_size`` at a time (little padding;
    results come back in request order). bf16 on a GPU, float32 on CPU (``load_causal_lm``).
    A completion ends at the first end-of-turn / EOS token; one that hits ``max_new_tokens``
    first is marked unfinished. With sampling, each generate call is seeded from its first
    request's seed, so outputs are reproducible for the same batching.
    """

    name = "transformers"

    def __init__(self, model: str, sampling: Sampling, batch_size: int) -> None:
        import torch

        from operators.models import load_causal_lm

        self.spec = model
        self.sampling = sampling
        self.batch_size = batch_size
        self.model, self.tok = load_causal_lm(model)
        self.device = next(self.model.parameters()).device
        self.torch = torch
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        stops = self.model.generation_config.eos_token_id
        stops = set(stops if isinstance(stops, list) else [stops]) | {self.tok.eos_token_id}
        end_turn = self.tok.get_vocab().get("<|im_end|>")
        self.stop_ids = sorted(i for i in (*stops, end_turn) if i is not None)
        self.counters = Counters()

    @property
    def generator(self) -> str:
        return f"transformers:{self.spec}"

    def encode(self, req: Request) -> list[int]:
        prompt = self.tok.apply_chat_template(list(req.messages), add_generation_prompt=True, tokenize=False)
        return self.tok(prompt, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[Request]) -> list[Result]:
        ids = [self.encode(r) for r in requests]
        out: list[Result] = [Result()] * len(requests)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            try:
                results = self.generate_ids([ids[i] for i in chunk], requests[chunk[0]].seed)
            except Exception as e:  # e.g. out of memory: these requests fail, the rest go on
                logger.warning("generate failed for %d prompts: %s", len(chunk), e)
                results = [Result(error=f"{type(e).__name__}: {e}"[:500])] * len(chunk)
            for i, r in zip(chunk, results):
                out[i] = r
        return out

    def generate_ids(self, seqs: list[list[int]], seed: int) -> list[Result]:
        """Generate for prompts given as token ids (one left-padded batch)."""
        torch, s = self.torch, self.sampling
        b, length = len(seqs), max(len(x) for x in seqs)
        input_ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for r, x in enumerate(seqs):
            input_ids[r, length - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[r, length - len(x) :] = 1
        kw: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if s.temperature > 0:
            kw = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": None}
            torch.manual_seed(seed)
        with torch.inference_mode():
            gen = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=s.max_new_tokens,
                pad_token_id=self.pad_id,
                eos_token_id=self.stop_ids,
                **kw,
            )
        new = gen[:, length:].tolist()
        results = []
        for row in new:
            end = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
            toks = row if end is None else row[:end]
            results.append(
                Result(
                    text=self.tok.decode(toks, skip_special_tokens=True),
                    n_tokens=len(toks),
                    finished=end is not None,
                )
            )
        return results


def vllm_missing() -> str | None:
    """Why the ``vllm`` backend cannot run here (None if it can)."""
    if importlib.util.find_spec("vllm") is None:
        return (
            "rephrase: backend 'vllm' needs vLLM, which is not installed (it wants a CUDA machine: "
            "`pip install vllm`, or `pip install 'ray[llm]'` for Ray Data's LLM processors); "
            "use backend 'transformers' here, or backend 'openai' against a `vllm serve` endpoint"
        )
    return None


class VLLMBackend:
    """Offline batched generation with a vLLM engine held by the stage's GPU actor.

    This is the engine ``ray.data.llm``'s vLLM processor runs in its actors. The processor
    itself is a Dataset → Dataset transform (one row per prompt), which does not fit a
    row-preserving operator that rejoins chunks per parent inside a batch, so the stage's
    own actor pool (``num_gpus=1`` per actor) holds the engine instead; vLLM schedules each
    batch's prompts with continuous batching. Requires vLLM (``vllm_missing`` says why not).
    """

    name = "vllm"

    def __init__(self, model: str, sampling: Sampling, engine_kwargs: dict[str, Any]) -> None:
        problem = vllm_missing()
        if problem:
            raise ValueError(problem)
        from vllm import LLM

        from operators.models import gpu_dtype, resolve

        self.spec = model
        self.sampling = sampling
        dtype = str(gpu_dtype()).removeprefix("torch.")
        self.llm = LLM(model=resolve(model), seed=sampling.seed, **{"dtype": dtype, **engine_kwargs})
        self.counters = Counters()

    @property
    def generator(self) -> str:
        return f"vllm:{self.spec}"

    def generate(self, requests: list[Request]) -> list[Result]:
        from vllm import SamplingParams

        s = self.sampling
        params = [
            SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=r.seed)
            for r in requests
        ]
        try:
            outs = self.llm.chat([list(r.messages) for r in requests], params, use_tqdm=False)
        except Exception as e:
            return [Result(error=f"{type(e).__name__}: {e}"[:500])] * len(requests)
        return [
            Result(
                text=o.outputs[0].text,
                n_tokens=len(o.outputs[0].token_ids),
                finished=o.outputs[0].finish_reason != "length",
            )
            for o in outs
        ]
