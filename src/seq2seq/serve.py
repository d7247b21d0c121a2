"""A translation server: `seq2seq serve --model CKPT`, an HTTP API and a web page.

    POST /translate  {"sentences": [...], "beam": 12, "nbest": 1, "length_penalty": 0}
                     -> {"translations": [...]}
    POST /score      {"sources": [...], "targets": [...]}         -> {"scores": [...]}
    GET  /health     GET /  (the web page)     GET /openapi.json (the schema)

Dynamic batching: translate requests that arrive within `batch_wait_ms` of each other are
decoded together, one `Translator.translate` call per (beam, nbest, length_penalty), up to
`max_batch_sentences` sentences. A batched LSTM step costs little more than a single one,
so under load this multiplies throughput. The model runs on one thread off the event
loop, one forward at a time; an error in a batch fails only the requests in that batch.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from seq2seq.errors import ArgumentError, check_integer, check_number, check_text
from seq2seq.search import MAX_BEAM, MAX_LENGTH_PENALTY, check_decoding
from seq2seq.translator import Translation, Translator

DECODE_BATCH = 64  # sentences per model call; abandoned requests are dropped between calls
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is there
LINGER_S = 2.0  # how long the rest of a refused body is read and dropped before closing
LOCAL_HOSTS = ("localhost",)  # Host names always served (IP addresses are, too)


# The `seq2seq serve` option of each field, named in the field's error message.
FLAGS = {"max_body_bytes": "--max-body-bytes", "max_sentences": "--max-sentences",
         "max_chars": "--max-chars", "max_beam": "--max-beam",
         "max_connections": "--max-connections", "max_queued_sentences": "--max-queue",
         "max_cost": "--max-cost", "header_timeout_s": "--header-timeout",
         "body_timeout_s": "--body-timeout", "port": "--port",
         "allowed_hosts": "--allowed-hosts"}


def _flag(name: str) -> str:
    return f" ({FLAGS[name]})"


@dataclass
class Limits:
    """What one request may ask for; larger requests are refused with a JSON error."""

    max_body_bytes: int = 1_000_000
    max_sentences: int = 256  # per request
    max_chars: int = 1000  # per sentence
    max_beam: int = 64  # this server's own cap, below what `check_decoding` allows

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_sentences", "max_chars"):
            check_integer(name, getattr(self, name), 1, why=_flag(name))
        check_integer("max_beam", self.max_beam, 1, MAX_BEAM, _flag("max_beam"))


@dataclass
class Guard:
    """What keeps one client from starving the others: connection and time limits, a
    bounded queue, and a bound on the work one request may ask for."""

    # open at once; when full, the oldest idle one (waiting for a request head) is closed
    # to admit a new one; if none is idle, the new one is closed on arrival
    max_connections: int = 512
    header_timeout_s: float = 10.0  # to send a request's headers (also idle keep-alive)
    body_timeout_s: float = 30.0  # between two chunks of a request body
    max_queued_sentences: int = 2048  # waiting to be translated; beyond: 503, Retry-After
    # The model steps one request may cost, summed over its sentences: a translation's
    # beam x output length budget (2 x source tokens + 10), about its decoder steps x
    # hypotheses; a scored pair's source tokens + target tokens + 1 (the steps of its
    # teacher-forced reading, each a softmax row as a hypothesis step is)
    max_cost: int = 1_000_000
    # Host header names served besides localhost and IP addresses ("*": any). Others get
    # 400: a web page whose name was rebound to this address cannot read the API.
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_queued_sentences", "max_cost"):
            check_integer(name, getattr(self, name), 1, why=_flag(name))
        for name in ("header_timeout_s", "body_timeout_s"):
            check_number(name, getattr(self, name), above=True, why=_flag(name))
        if isinstance(self.allowed_hosts, str) or \
                not all(isinstance(h, str) and h for h in self.allowed_hosts):
            raise ArgumentError("allowed_hosts must be a list of host names"
                                f"{_flag('allowed_hosts')}", argument="allowed_hosts")
        self.allowed_hosts = tuple(h.lower() for h in self.allowed_hosts)


@dataclass
class Batching:
    """How long the batch worker waits for company, and how much it takes at once."""

    wait_ms: float = 5.0
    max_sentences: int = 64

    def __post_init__(self) -> None:
        check_number("wait_ms", self.wait_ms, why=" (--batch-wait-ms)")
        check_integer("max_sentences", self.max_sentences, 1, why=" (--max-batch-sentences)")

    @classmethod
    def off(cls) -> Batching:
        """One request per model call, no waiting: the baseline for benchmarks."""
        return cls(wait_ms=0.0, max_sentences=1)


# ---------------------------------------------------------------------------- API schema


class _Strict(BaseModel):
    # strict: a number must be a JSON number (not true, not "4"), an integer an integer
    model_config = ConfigDict(extra="forbid", strict=True)


class TranslateRequest(_Strict):
    sentences: list[str] = Field(description="raw source sentences")
    # Ranges are checked by `check_decoding`, the library's own check (same words as the
    # CLI's and Translator's); the schema only types the fields.
    beam: int = Field(12, description="beam size; 1 = greedy (at most the server's "
                                      "--max-beam, 64 by default)")
    nbest: int = Field(1, description="hypotheses returned per sentence, at most beam")
    length_penalty: float = Field(
        0.0, description="rank beam hypotheses by log p / ((5 + length) / 6) ** "
                         f"length_penalty, in [0, {MAX_LENGTH_PENALTY:g}]; 0 = by log p, as "
                         "in the paper")


class HypothesisOut(BaseModel):
    text: str
    score: float = Field(description="log p(text </s> | source)")


class TranslationOut(BaseModel):
    text: str
    score: float
    nbest: list[HypothesisOut]


class TranslateResponse(BaseModel):
    translations: list[TranslationOut]


class ScoreRequest(_Strict):
    sources: list[str]
    targets: list[str]


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="log p(target </s> | source) per pair")


class Health(BaseModel):
    status: str
    models: list[str]
    device: str
    precision: str = Field(description="fp32, bf16, fp16 or int8: what the model runs in")
    batching: bool
    requests: int = Field(description="translate requests answered so far")
    batches: int = Field(description="translate calls made to the model for them")
    model_calls: int = Field(description="model calls (batches of up to 64 sentences)")
    abandoned: int = Field(description="requests whose client left before the answer")


# ---------------------------------------------------------------------------- batching


@dataclass
class _Pending:
    sentences: list[str]
    beam: int
    nbest: int
    length_penalty: float
    future: asyncio.Future = field(repr=False)


class QueueFull(Exception):
    """The batcher holds `Guard.max_queued_sentences` already."""


class ClientGone(Exception):
    """The client disconnected before its translations were ready."""


class Batcher:
    """Collects translate requests and runs them through the model in shared batches.

    Request handlers await `translate`; one worker task on the event loop forms the
    batches and a single-thread executor runs the model, so at most one forward pass runs
    at a time and the event loop stays free to accept requests.
    """

    def __init__(self, translator: Translator, batching: Batching,
                 max_queued_sentences: int = Guard.max_queued_sentences):
        self.translator = translator
        self.batching = batching
        self.max_queued_sentences = max_queued_sentences
        self.requests = 0
        self.batches = 0
        self.abandoned = 0  # requests whose client left before their answer
        self.model_calls = 0
        self._pending: deque[_Pending] = deque()
        self._scoring = 0  # pairs of /score requests being scored
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seq2seq-model")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def translate(self, sentences: list[str], beam: int, nbest: int,
                        length_penalty: float = 0.0,
                        gone: Callable[[], Awaitable[bool]] | None = None
                        ) -> list[Translation]:
        """Queue the sentences; their translations once their batch has been decoded.
        QueueFull if that would queue more than `max_queued_sentences`. `gone` (the
        request's `is_disconnected`) is polled while waiting: a client that left has its
        sentences dropped, not decoded (ClientGone)."""
        if self._waiting() + len(sentences) > self.max_queued_sentences:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(sentences, beam, nbest, length_penalty, future))
        self._arrived.set()
        while gone is not None and not future.done():
            await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if not future.done() and await gone():
                future.cancel()
                self.abandoned += 1
                raise ClientGone
        return await future

    async def score(self, sources: list[str], targets: list[str],
                    gone: Callable[[], Awaitable[bool]] | None = None) -> list[float]:
        """log p(T|S) of each pair, DECODE_BATCH pairs per model call. As `translate`: its
        pairs count against `max_queued_sentences` (QueueFull), and a client that left
        (`gone`) stops the work at the next model call (ClientGone)."""
        if self._waiting() + len(sources) > self.max_queued_sentences:
            raise QueueFull
        self._scoring += len(sources)
        try:
            scores: list[float] = []
            for lo in range(0, len(sources), DECODE_BATCH):
                if gone is not None and await gone():
                    self.abandoned += 1
                    raise ClientGone
                scores += await self.run_model(self.translator.score,
                                               sources[lo:lo + DECODE_BATCH],
                                               targets[lo:lo + DECODE_BATCH])
                self.model_calls += 1
            return scores
        finally:
            self._scoring -= len(sources)

    async def run_model(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the model thread, one call at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            groups: dict[tuple[int, int, float], list[_Pending]] = {}
            for item in batch:
                key = (item.beam, item.nbest, item.length_penalty)
                groups.setdefault(key, []).append(item)
            for options, items in groups.items():
                await self._decode(items, *options)

    async def _next_batch(self) -> list[_Pending]:
        """Wait for a request, then up to `wait_ms` for more, until the batch is full."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batching.wait_ms / 1000
        while self._queued_sentences() < self.batching.max_sentences:
            left = deadline - loop.time()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return self._take()

    def _queued_sentences(self) -> int:
        return sum(len(p.sentences) for p in self._pending if not p.future.done())

    def _waiting(self) -> int:
        """Sentences to translate and pairs to score that are not yet answered."""
        return self._queued_sentences() + self._scoring

    def _take(self) -> list[_Pending]:
        """Pending requests, oldest first, up to max_sentences (always at least one);
        those whose client left are dropped."""
        while len(self._pending) > 1 and self._pending[0].future.done():
            self._pending.popleft()
        batch = [self._pending.popleft()]
        size = len(batch[0].sentences)
        while self._pending:
            size += len(self._pending[0].sentences)
            if size > self.batching.max_sentences:
                break
            batch.append(self._pending.popleft())
        return batch

    async def _decode(self, items: list[_Pending], beam: int, nbest: int,
                      length_penalty: float) -> None:
        """Translate all `items` together, DECODE_BATCH sentences per model call; results
        (or the error) go to each future. Between calls, items whose client left are
        dropped, so an abandoned large request stops costing the others."""
        results: list[Translation] = []
        try:
            while len(results) < sum(len(item.sentences) for item in items):
                live = [item for item in items if not item.future.done()]
                if not live:
                    return
                if len(live) < len(items):  # drop the gone ones, keep what is decoded
                    results = _keep(items, live, results)
                    items = live
                sentences = [s for item in items for s in item.sentences]
                chunk = sentences[len(results):len(results) + DECODE_BATCH]
                results += await self.run_model(self._translate, chunk, beam, nbest,
                                                length_penalty)
                self.model_calls += 1
        except Exception as err:  # the worker must outlive any one failing batch
            for item in items:
                _resolve(item.future, error=err)
            return
        self.batches += 1
        start = 0
        for item in items:
            stop = start + len(item.sentences)
            self.requests += 1
            _resolve(item.future, results[start:stop])
            start = stop

    def _translate(self, sentences: list[str], beam: int, nbest: int,
                   length_penalty: float) -> list[Translation]:
        return self.translator.translate(sentences, beam=beam, nbest=nbest,
                                         batch_size=DECODE_BATCH,
                                         length_penalty=length_penalty)


def _keep(items: list[_Pending], live: list[_Pending], results: list) -> list:
    """The decoded `results` of `items` that belong to the `live` ones, in order."""
    kept, start = [], 0
    for item in items:
        part = results[start:start + len(item.sentences)]
        start += len(item.sentences)
        if item in live:
            kept += part
    return kept


def _resolve(future: asyncio.Future, result: Any = None,
             error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its handler was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------------- limits


# The rest of a refused body is not read: the connection closes after the answer, or a
# client trickling bytes would hold it with no timer running.
CLOSE = {"Connection": "close"}


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the app parses it,
    one whose next chunk takes over `body_timeout_s` gets 408; both close the connection.

    Checks Content-Length up front and counts streamed (chunked) bodies as they arrive.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int,
                 body_timeout_s: float = Guard.body_timeout_s):
        self.app, self.max_bytes, self.body_timeout_s = app, max_bytes, body_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if int(length or 0) > self.max_bytes:
            return await self._refuse(send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within "
                                         f"{self.body_timeout_s:g} s", CLOSE) from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message, CLOSE)
            return message

        await self.app(scope, counted, send)

    @property
    def message(self) -> str:
        return (f"request body is over the limit of {self.max_bytes} bytes "
                "(--max-body-bytes)")

    async def _refuse(self, send: Callable) -> None:
        body = json.dumps({"detail": self.message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class HostCheck:
    """ASGI middleware: 400 unless the request's Host is an IP address, localhost, or one of
    `allowed` ("*": any). A page on another site whose name an attacker re-points at this
    address (DNS rebinding) sends its own name as Host, and is refused."""

    def __init__(self, app: Callable[..., Awaitable[None]], allowed: tuple[str, ...] = ()):
        self.app, self.allowed = app, set(LOCAL_HOSTS) | set(allowed)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and not self.allows(dict(scope["headers"]).get(b"host")):
            body = json.dumps({"detail": "this Host is not served (--allowed-hosts)"}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            return await send({"type": "http.response.body", "body": body})
        await self.app(scope, receive, send)

    def allows(self, header: bytes | None) -> bool:
        if "*" in self.allowed:
            return True
        host = (header or b"").decode("latin-1").strip().lower()
        if host.startswith("["):  # [IPv6]:port
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return host.rstrip(".") in self.allowed


def _refuse(field_name: str, msg: str, kind: str, loc: tuple = ()) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field and the limit."""
    return HTTPException(422, [{"loc": ["body", field_name, *loc], "msg": msg, "type": kind}])


def check_sentences(sentences: list[str], field_name: str, limits: Limits) -> None:
    """Raise a 422 naming the limit if there are too many sentences or one is too long."""
    if len(sentences) > limits.max_sentences:
        raise _refuse(field_name, f"{len(sentences)} sentences; at most "
                      f"{limits.max_sentences} per request (--max-sentences)", "too_many")
    for i, sentence in enumerate(sentences):
        if len(sentence) > limits.max_chars:
            raise _refuse(field_name, f"sentence {i} has {len(sentence)} characters; at most "
                          f"{limits.max_chars} (--max-chars)", "too_long", (i,))
    try:
        check_text(field_name, sentences)
    except ArgumentError as err:
        raise _refuse(field_name, str(err), "invalid_text") from None


def check_cost(cost: int, guard: Guard, how: str, field_name: str) -> None:
    """Raise a 422 naming --max-cost if `cost` (computed as `how` says) is over it."""
    if cost > guard.max_cost:
        raise _refuse(field_name, f"request cost {cost:,} is over the limit of {guard.max_cost:,} "
                      f"({how}; --max-cost): send less", "too_costly")


def check_request_decoding(req: TranslateRequest, limits: Limits) -> None:
    """Raise a 422 naming the field if a decoding argument is out of `check_decoding`'s
    range (its message, word for word) or over this server's beam limit."""
    try:
        check_decoding(req.beam, req.nbest, length_penalty=req.length_penalty)
    except ArgumentError as err:
        raise _refuse(err.argument or "body", str(err), "out_of_range") from None
    if req.beam > limits.max_beam:
        raise _refuse("beam", f"beam {req.beam} is over this server's limit of "
                      f"{limits.max_beam} (--max-beam)", "over_limit")


# ---------------------------------------------------------------------------- the app


def create_app(translator: Translator, limits: Limits | None = None,
               batching: Batching | None = None, model_names: list[str] | None = None,
               guard: Guard | None = None) -> FastAPI:
    """The FastAPI application around a loaded `Translator` (run it with `uvicorn_config`
    for the connection limits of `guard`)."""
    limits, batching, guard = limits or Limits(), batching or Batching(), guard or Guard()
    batcher = Batcher(translator, batching, guard.max_queued_sentences)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    # No /docs or /redoc: FastAPI's pages load scripts from a CDN; we serve everything.
    app = FastAPI(title="seq2seq", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Deep-LSTM translation (Sutskever et al., 2014).")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes,
                       body_timeout_s=guard.body_timeout_s)
    app.add_middleware(HostCheck, allowed=guard.allowed_hosts)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)
    # file names only: /health must not tell a page that can reach it where files are
    _add_routes(app, batcher, limits, guard, [Path(m).name for m in model_names or []])
    app.state.guard = guard
    return app


def _add_routes(app: FastAPI, batcher: Batcher, limits: Limits, guard: Guard,
                model_names: list[str]) -> None:
    translator = batcher.translator

    @app.post("/translate", response_model=TranslateResponse)
    async def translate(req: TranslateRequest, request: Request) -> TranslateResponse:
        check_sentences(req.sentences, "sentences", limits)
        check_request_decoding(req, limits)
        cost = req.beam * sum(2 * len(translator.src_tokenizer.tokenize(s)) + 10
                              for s in req.sentences)
        check_cost(cost, guard, "beam x (2 x source tokens + 10), summed over the sentences",
                   "sentences")
        try:
            results = await batcher.translate(req.sentences, req.beam, req.nbest,
                                              req.length_penalty, request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)  # nobody is there to read it
        except QueueFull:
            raise HTTPException(503, "the translation queue is full; retry shortly",
                                headers={"Retry-After": "1"}) from None
        return TranslateResponse(translations=[_translation_out(r) for r in results])

    @app.post("/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest, request: Request) -> ScoreResponse:
        check_sentences(req.sources, "sources", limits)
        check_sentences(req.targets, "targets", limits)
        if len(req.sources) != len(req.targets):
            raise _refuse("targets", f"{len(req.targets)} targets for {len(req.sources)} "
                          "sources; they must pair up", "length_mismatch")
        cost = sum(len(translator.src_tokenizer.tokenize(s)) +
                   len(translator.tgt_tokenizer.tokenize(t)) + 1
                   for s, t in zip(req.sources, req.targets))
        check_cost(cost, guard, "source tokens + target tokens + 1, summed over the pairs",
                   "targets")
        try:
            scores = await batcher.score(req.sources, req.targets, request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)
        except QueueFull:
            raise HTTPException(503, "the scoring queue is full; retry shortly",
                                headers={"Retry-After": "1"}) from None
        return ScoreResponse(scores=scores)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", models=model_names, device=str(translator.ensemble.device),
                      precision=translator.precision, batching=batcher.batching.max_sentences > 1,
                      requests=batcher.requests, batches=batcher.batches,
                      model_calls=batcher.model_calls, abandoned=batcher.abandoned)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(files("seq2seq").joinpath("static/index.html").read_text("utf-8"))


def _translation_out(t: Translation) -> TranslationOut:
    return TranslationOut(text=t.text, score=t.score,
                          nbest=[HypothesisOut(text=x, score=s) for x, s in t.nbest])


async def _invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
    """422 naming the field. Inputs that JSON cannot carry back (NaN, Infinity, 1e400, a
    lone surrogate) are echoed as text; FastAPI's own handler would fail on them with a
    500."""
    detail = [{k: _json_safe(v) for k, v in e.items() if k in ("loc", "msg", "type", "input")}
              for e in err.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, str):  # a lone surrogate cannot be written as UTF-8: escaped
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, int | float | bool):
        return value
    return _json_safe(str(value))


async def _internal_error(_: Request, err: Exception) -> JSONResponse:
    """Any unexpected error: 500 with a generic JSON body (the error's text stays in the
    server's log, where uvicorn writes the traceback); the server keeps serving."""
    return JSONResponse({"detail": "internal error (see the server's log)"}, status_code=500)


def serve(models: list[str], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          precision: str = "fp32", limits: Limits | None = None,
          batching: Batching | None = None, guard: Guard | None = None) -> None:
    """Load the checkpoints (several = an ensemble) and serve them until interrupted.

    An entry point: it tunes the process for decoding (`seq2seq.device.setup_process`)."""
    import uvicorn

    from seq2seq.device import resolve_device, setup_process

    check_integer("port", port, 1, 65535, _flag("port"))
    setup_process("decode", resolve_device(device))
    translator = Translator.load(models, device=device, precision=precision)
    app = create_app(translator, limits, batching, [str(m) for m in models], guard)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level="info")).run()


def uvicorn_config(app: FastAPI, **kwargs):
    """uvicorn's config for `app`, with the connection guard of `app.state.guard`."""
    import uvicorn

    guard = app.state.guard
    protocol = type("GuardedProtocol", (_guarded_protocol(),),
                    {"max_connections": guard.max_connections,
                     "header_timeout_s": guard.header_timeout_s})
    return uvicorn.Config(app, http=protocol, timeout_keep_alive=guard.header_timeout_s,
                          **kwargs)


@functools.cache
def _guarded_protocol():
    """uvicorn's h11 protocol, plus: at `max_connections` a new connection takes the place
    of the one that has waited longest for a request head (idle after its last response,
    or slow to send its head), or is closed on arrival if every one has a request under
    way, so idle sockets cannot lock out clients that send requests; one that has not sent
    a whole request head within `header_timeout_s` of connecting (or of its last response)
    is closed (slow or partial headers); and one closed with its request body still
    arriving lingers (see `_Lingering`)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        max_connections = Guard.max_connections
        header_timeout_s = Guard.header_timeout_s
        _head_timer: asyncio.TimerHandle | None = None  # set while waiting for a head
        _waiting_since = 0.0

        def connection_made(self, transport) -> None:
            if len(self.connections) >= self.max_connections and not self._close_longest_idle():
                transport.close()
                self.transport = None
                return
            super().connection_made(_Lingering(transport, self))
            self._arm()

        def _close_longest_idle(self) -> bool:
            """Close the connection that has waited longest for a request head; False if
            every connection has a request under way."""
            idle = [c for c in self.connections if getattr(c, "_head_timer", None)]
            if not idle:
                return False
            longest = min(idle, key=lambda c: c._waiting_since)
            longest._disarm()
            longest.transport.close()
            return True

        def connection_lost(self, exc) -> None:
            if self.transport is None:  # refused on arrival
                return
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.lingering:  # the rest of a refused body
                return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._waiting_since = self.loop.time()
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    class _Lingering:
        """The connection's transport, except when it is closed while the client is still
        sending a request body (after a 413 or 408): closing with unread data would reset
        the connection and the client could lose the answer already sent. So it half-closes
        instead, the protocol drops what still arrives, and it closes after LINGER_S."""

        def __init__(self, transport, protocol: Guarded):
            self._transport, self._protocol = transport, protocol
            self.lingering = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

        def close(self) -> None:
            if (self.lingering or self._protocol.conn.their_state is not h11.SEND_BODY
                    or not self._transport.can_write_eof()):
                self._transport.close()
                return
            self.lingering = True
            self._transport.write_eof()
            self._transport.resume_reading()
            self._protocol.loop.call_later(LINGER_S, self._transport.close)

        def is_closing(self) -> bool:
            return self.lingering or self._transport.is_closing()

    return Guarded
