"""Gathers texts of concurrent requests into forward passes: one model worker thread, a bounded queue.

The worker is a plain thread, not the event loop, because a forward pass blocks for milliseconds to
seconds; torch releases the GIL meanwhile, so the HTTP side keeps accepting and validating requests.
A request's texts may be split across forward passes when it is larger than a batch; it is answered
once all of them are done. The queue is bounded in texts (what a forward pass costs), not requests.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

from .settings import MODES, default

log = logging.getLogger("xlprompt.serve")



class QueueFull(Exception):
    """The queue holds too many texts to take this request now."""


class Closed(Exception):
    """The worker is stopping (server shutdown)."""


class Job:
    """One request: a run, the token ids of its texts, and where to report when all rows are done."""

    def __init__(self, entry, token_ids: list[list[int]], on_done: Callable[["Job"], None]):
        self.entry = entry
        self.token_ids = token_ids
        self.logits: list = [None] * len(token_ids)
        self.done_rows = 0
        self.error: BaseException | None = None
        self.cancelled = False  # the client went away: rows not yet in a batch are dropped
        self.on_done = on_done
        self.enqueued = 0.0

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def finished(self) -> bool:
        return self.error is not None or self.done_rows == len(self)


class Batcher:
    """`submit` jobs from any thread; the worker runs forward passes of at most `max_batch` texts, waiting
    at most `max_wait` seconds after the oldest queued text for a batch to fill.

    mode "mixed": a batch takes texts of any prompts, oldest first. "single": only texts of the prompt of
    the oldest queued text (the baseline a server without mixed batches has)."""

    def __init__(self, forward, max_batch: int = default("max_batch"), max_wait: float = default("max_wait_ms") / 1000,
                 max_queue: int = default("max_queue"), mode: str = default("batching")):
        if mode not in MODES:
            raise ValueError(f"Unknown batching {mode!r}: use mixed or single.")
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0.")
        self.forward = forward  # (entries, token_ids) -> logits per row, e.g. PromptBank.forward
        self.max_batch, self.max_wait, self.max_queue, self.mode = max_batch, max_wait, max_queue, mode
        self._chunks: deque = deque()  # [job, next row] in arrival order
        self._queued = 0               # texts waiting, not yet in a batch
        self._cond = threading.Condition()
        self._stopping = False
        self._hurry = False  # draining: batches no longer wait to fill
        self._thread = threading.Thread(target=self._work, name="xlprompt-model-worker", daemon=True)
        self.stats = {"batches": 0, "texts": 0, "failed_batches": 0}

    # ------------------------------------------------------------------ the request side

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queued

    def check_room(self, texts: int) -> None:
        """Raise Closed or QueueFull when `texts` more could not be queued now (a request asks before it
        tokenizes; `submit` asks again, under the lock, when it queues)."""
        if self._stopping:
            raise Closed("the server is shutting down")
        if self._thread.ident is not None and not self._thread.is_alive():
            raise Closed("the model worker stopped (see the server log): restart the server")
        if self._queued + texts > self.max_queue:
            raise QueueFull(f"the server is busy: {self._queued} texts are queued and this request adds "
                            f"{texts} (at most {self.max_queue} may wait); retry shortly")

    def submit(self, job: Job) -> None:
        with self._cond:
            self.check_room(len(job))
            job.enqueued = time.monotonic()
            self._chunks.append([job, 0])
            self._queued += len(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client left: drop its rows that wait now (rows already in a batch still finish)."""
        with self._cond:
            job.cancelled = True
            self._drop_dead()

    def hurry(self) -> None:
        """The server is draining (SIGTERM): run what waits at once instead of waiting for fuller batches."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, let the batch in progress finish, fail what still waits."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            left = [job for job, _ in self._chunks]
            self._chunks.clear()
            self._queued = 0
        for job in dict.fromkeys(left):
            self._fail(job, Closed("the server is shutting down"))

    # ------------------------------------------------------------------ the worker side

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # a bug here must not kill the only worker
                log.exception("batch failed outside the model")
                for job, _, _ in batch:
                    self._fail(job, exc)

    def _drop_dead(self) -> None:
        """Forget queued rows of requests that failed or whose client left (caller holds the lock)."""
        kept = deque()
        for chunk in self._chunks:
            job, start = chunk
            if job.error is not None or job.cancelled:
                self._queued -= len(job) - start
            else:
                kept.append(chunk)
        self._chunks = kept

    def _ready(self) -> int:
        if self.mode == "mixed":
            return self._queued
        head = self._chunks[0][0].entry
        return sum(len(job) - start for job, start in self._chunks if job.entry is head)

    def _take(self) -> list[tuple[Job, int, int]] | None:
        with self._cond:
            while True:
                self._drop_dead()
                if self._chunks:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._chunks[0][0].enqueued + self.max_wait
            while not self._stopping and not self._hurry and self._ready() < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                self._drop_dead()
                if not self._chunks:  # every waiting request left meanwhile
                    return []
            return self._pop()

    def _pop(self) -> list[tuple[Job, int, int]]:
        """Up to max_batch rows, oldest first; in single mode only those of the oldest row's prompt."""
        head = self._chunks[0][0].entry
        room, taken, kept = self.max_batch, [], deque()
        for chunk in self._chunks:
            job, start = chunk
            if room == 0 or (self.mode == "single" and job.entry is not head):
                kept.append(chunk)
                continue
            end = min(len(job), start + room)
            taken.append((job, start, end))
            room -= end - start
            if end < len(job):
                chunk[1] = end
                kept.append(chunk)
        self._chunks = kept
        self._queued -= self.max_batch - room
        return taken

    def _run(self, batch: list[tuple[Job, int, int]]) -> None:
        if not batch:
            return
        entries = [job.entry for job, start, end in batch for _ in range(start, end)]
        ids = [row for job, start, end in batch for row in job.token_ids[start:end]]
        try:
            logits = self.forward(entries, ids)
        except Exception as exc:
            self.stats["failed_batches"] += 1
            if len({id(job.entry) for job, _, _ in batch}) == 1:
                log.error("forward pass failed: %r", exc)
                for job, _, _ in batch:
                    self._fail(job, exc)
                return
            # one bad run must not fail the requests of the others that shared its batch: retry per run
            log.error("mixed forward pass failed (%r); retrying run by run", exc)
            by_run: dict = {}
            for part in batch:
                by_run.setdefault(id(part[0].entry), []).append(part)
            for parts in by_run.values():
                self._run(parts)
            return
        self.stats["batches"] += 1
        self.stats["texts"] += len(ids)
        at = 0
        for job, start, end in batch:
            job.logits[start:end] = logits[at:at + end - start]
            at += end - start
            if job.error is None:
                job.done_rows += end - start
                if job.done_rows == len(job):
                    self._report(job)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.finished:
            return
        job.error = exc
        self._report(job)

    @staticmethod
    def _report(job: Job) -> None:
        try:
            job.on_done(job)
        except Exception:  # the reply channel is the caller's; its failure is not the batch's
            log.exception("reporting a finished request failed")
