"""Dynamic batching, plain asyncio: translate requests that arrive within `Batching.wait_ms`
of each other are decoded together, one `Translator.translate` call per (beam, nbest,
length_penalty), up to `Batching.max_sentences` sentences. The model runs on one thread
off the event loop, one forward at a time; an error in a batch fails only the requests in
that batch."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from seq2seq.serve.limits import Batching, Guard
from seq2seq.translator import Translation, Translator

DECODE_BATCH = 64  # sentences per model call; abandoned requests are dropped between calls
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is there


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

