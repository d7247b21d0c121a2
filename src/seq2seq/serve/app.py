"""The HTTP API: its schema, the checks of each request against the limits (a 422 naming
the field and the option), the routes, and `create_app`.

    POST /translate  {"sentences": [...], "beam": 12, "nbest": 1, "length_penalty": 0}
                     -> {"translations": [...]}
    POST /score      {"sources": [...], "targets": [...]}         -> {"scores": [...]}
    GET  /health     GET /  (the web page)     GET /openapi.json (the schema)
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from seq2seq.errors import MAX_LENGTH_PENALTY, ArgumentError, check_text
from seq2seq.search import check_decoding
from seq2seq.serve.batching import Batcher, ClientGone, QueueFull
from seq2seq.serve.limits import Batching, Guard, Limits
from seq2seq.serve.transport import BodyLimit
from seq2seq.translator import Translation, Translator

LOCAL_HOSTS = ("localhost",)  # Host names always served (IP addresses are, too)


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
    shortlist: bool = Field(description="translations decoded over a vocabulary shortlist "
                            "(`serve --shortlist`): their scores normalised over it")
    batching: bool
    requests: int = Field(description="translate requests answered so far")
    batches: int = Field(description="translate calls made to the model for them")
    model_calls: int = Field(description="model calls (batches of up to 64 sentences)")
    abandoned: int = Field(description="requests whose client left before the answer")



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


def _unprocessable(field_name: str, msg: str, kind: str, loc: tuple = ()) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field and the limit."""
    return HTTPException(422, [{"loc": ["body", field_name, *loc], "msg": msg, "type": kind}])


def check_sentences(sentences: list[str], field_name: str, limits: Limits) -> None:
    """Raise a 422 naming the limit if there are too many sentences or one is too long."""
    if len(sentences) > limits.max_sentences:
        raise _unprocessable(field_name, f"{len(sentences)} sentences; at most "
                             f"{limits.max_sentences} per request (--max-sentences)",
                             "too_many")
    for i, sentence in enumerate(sentences):
        if len(sentence) > limits.max_chars:
            raise _unprocessable(field_name, f"sentence {i} has {len(sentence)} characters; "
                                 f"at most {limits.max_chars} (--max-chars)", "too_long", (i,))
    try:
        check_text(field_name, sentences)
    except ArgumentError as err:
        raise _unprocessable(field_name, str(err), "invalid_text") from None


def check_cost(cost: int, guard: Guard, how: str, field_name: str) -> None:
    """Raise a 422 naming --max-cost if `cost` (computed as `how` says) is over it."""
    if cost > guard.max_cost:
        raise _unprocessable(field_name, f"request cost {cost:,} is over the limit of "
                             f"{guard.max_cost:,} ({how}; --max-cost): send less", "too_costly")


def check_request_decoding(req: TranslateRequest, limits: Limits) -> None:
    """Raise a 422 naming the field if a decoding argument is out of `check_decoding`'s
    range (its message, word for word) or over this server's beam limit."""
    try:
        check_decoding(req.beam, req.nbest, length_penalty=req.length_penalty)
    except ArgumentError as err:
        raise _unprocessable(err.argument or "body", str(err), "out_of_range") from None
    if req.beam > limits.max_beam:
        raise _unprocessable("beam", f"beam {req.beam} is over this server's limit of "
                             f"{limits.max_beam} (--max-beam)", "over_limit")


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
            raise _unprocessable("targets", f"{len(req.targets)} targets for "
                                 f"{len(req.sources)} sources; they must pair up",
                                 "length_mismatch")
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
                      precision=translator.precision,
                      shortlist=translator.ensemble.shortlist is not None,
                      batching=batcher.batching.max_sentences > 1,
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

