"""The HTTP service of `xlprompt serve`: FastAPI endpoints over a PromptBank and one batching worker.

Every error answers JSON `{"error": "..."}` with a 4xx status saying what to change (5xx only for a
failed forward pass or a full queue), and never stops the server: validation happens on the event loop
before anything reaches the model, and a failing batch fails only the requests in it. What clients may
change, and what answers may reveal, is in `access.py`: no answer holds a server path.
"""
from __future__ import annotations

import asyncio
import logging
import math
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from ..core.errors import XlpromptError
from .access import ClientLimit, Scrubber, bearer_matches, public_model, resolve_run
from .batcher import Batcher, Closed, Job, QueueFull
from .multi import PromptBank
from .served import DuplicateName, InUse, to_prediction
from .settings import ServeSettings

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise XlpromptError("xlprompt serve needs FastAPI and uvicorn: pip install 'xlprompt[serve]'.") from exc

from .guard import LOOPBACK_HOSTS, Guard, error_list, fail, parse  # noqa: E402  (needs FastAPI, checked above)

log = logging.getLogger("xlprompt.serve")


class ClassifyRequest(BaseModel):
    # strict: 5 is not the text "5", and a misspelt field is an error rather than silently ignored
    model_config = ConfigDict(strict=True, extra="forbid")
    prompt: str
    texts: list[str]
    text_pairs: list[str] | None = None


class AddPromptRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    name: str
    run: str | None = None   # a run folder inside the prompts directory (default: `name`)
    path: str | None = None  # refused with a message: the API of earlier releases


def _schema(model) -> dict:
    """The request body in /docs, since the handlers parse it themselves."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def check_texts(req: ClassifyRequest, settings: ServeSettings) -> None:
    if not req.texts:
        fail(400, "texts is empty: send at least one text to classify.")
    if len(req.texts) > settings.max_texts:
        fail(413, f"{len(req.texts)} texts in one request; at most {settings.max_texts}: split the request.")
    fields = [("texts", req.texts)]
    if req.text_pairs is not None:
        if len(req.text_pairs) != len(req.texts):
            fail(400, f"text_pairs has {len(req.text_pairs)} entries for {len(req.texts)} texts: give one per text.")
        fields.append(("text_pairs", req.text_pairs))
    for field, values in fields:
        for i, text in enumerate(values):
            if not text.strip():
                fail(400, f"{field}[{i}] is empty: every text needs some content.")
            if len(text) > settings.max_chars:
                fail(413, f"{field}[{i}] has {len(text)} characters; at most {settings.max_chars}.")


async def answered_or_left(request: Request, answer: asyncio.Future) -> bool:
    """Wait for the batcher's answer; False as soon as the client disconnects instead."""
    async def left():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(left())
    try:
        await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    return answer.done()


class ClientLeft(Exception):
    """The client disconnected before its answer was ready."""


def answer_body(name: str, entries: list, logits: list[list]) -> dict:
    """/classify's answer: one prompt's predictions, or an ensemble's mean class probabilities."""
    entry = entries[0]
    members = [[to_prediction(e, row) for row in rows] for e, rows in zip(entries, logits)]
    if not all(math.isfinite(s) for preds in members for p in preds for s in p.logits):
        fail(500, "the model returned non-finite scores for this request.")
    scores = np.mean([[p.scores for p in preds] for preds in members], axis=0)
    body = {"prompt": name, "labels": list(entry.label_names), "predictions": [
        {"label": entry.label_names[int(np.argmax(row))], "label_index": int(np.argmax(row)),
         "scores": dict(zip(entry.label_names, map(float, row)))} for row in scores]}
    if len(entries) > 1 or entry.name != name:
        body["members"] = [e.name for e in entries]
    return body


def create_app(bank: PromptBank, settings: ServeSettings | None = None):
    """The ASGI app; its lifespan starts and stops the model worker."""
    settings = settings or ServeSettings()
    batcher = Batcher(bank.forward, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue,
                      settings.batching)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = FastAPI(title="xlprompt serve", lifespan=lifespan)
    app.add_middleware(Guard, limit=settings.body_limit(), seconds=settings.body_seconds,
                       hosts=settings.allowed_hosts)
    limits = ClientLimit(settings.max_client_texts)
    scrub = Scrubber(settings.prompts_dir, (bank.backbone.name, Path.home(), Path.cwd()))
    app.state.bank, app.state.batcher, app.state.settings, app.state.limits = bank, batcher, settings, limits

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": scrub(str(exc.detail))}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):  # path parameters
        return JSONResponse({"error": scrub(error_list(exc.errors()))}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return JSONResponse({"error": "internal error: the server's log says what failed."}, status_code=500)

    def authenticate(request: Request) -> None:
        """--auth all: every endpoint but /health needs the token."""
        if settings.auth == "all" and not bearer_matches(settings.token, request.headers.get("authorization")):
            raise HTTPException(401, "send the server's token as 'Authorization: Bearer TOKEN'.",
                                headers={"WWW-Authenticate": "Bearer"})

    def authorize(request: Request, action: str) -> None:
        if not settings.allow_changes:
            fail(403, f"this server was started with --read-only: prompts cannot be {action}.")
        if settings.token is None:
            fail(403, f"this server was started without --token (or XLPROMPT_TOKEN): prompts cannot be {action}.")
        if not bearer_matches(settings.token, request.headers.get("authorization")):
            raise HTTPException(401, "send the server's token as 'Authorization: Bearer TOKEN' to change prompts.",
                                headers={"WWW-Authenticate": "Bearer"})

    def public_info(entry) -> dict:
        info = {k: v for k, v in entry.info().items() if k != "path"}
        root = settings.prompts_dir
        inside = root is not None and entry.path.is_relative_to(root)
        return {**info, "run": str(entry.path.relative_to(root)) if inside else entry.path.name,
                "model": public_model(info["model"])}

    def lookup(name: str):
        try:
            return bank.resolve(name)  # one prompt, or an ensemble's members
        except KeyError as exc:
            fail(404, exc.args[0])

    @app.post("/classify", openapi_extra=_schema(ClassifyRequest))
    async def classify(request: Request):
        authenticate(request)
        req = await parse(request, ClassifyRequest)
        check_texts(req, settings)
        entries = lookup(req.prompt)
        # what a request may take is settled before it costs anything: its client's share, then queue room
        client, count = (request.client.host if request.client else "unknown"), len(req.texts) * len(entries)
        if not limits.take(client, count):
            raise HTTPException(429, f"this client has {limits.in_flight.get(client, 0)} texts waiting or in a batch "
                                     f"and this request adds {count} (at most {limits.limit} at once): wait for "
                                     "the answers first", headers={"Retry-After": "1"})
        jobs = []
        try:
            try:
                batcher.check_room(count)
                ids = [await run_in_threadpool(e.encode, req.texts, req.text_pairs) for e in entries]
            except XlpromptError as exc:
                fail(400, str(exc))
            except (QueueFull, Closed) as exc:
                raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
            loop = asyncio.get_running_loop()
            answer, waiting = loop.create_future(), [len(entries)]

            def settle(job):  # an ensemble's answer is ready when every member's job is
                waiting[0] -= 1
                if waiting[0] == 0 and not answer.done():
                    answer.set_result(None)

            try:
                for entry, entry_ids in zip(entries, ids):
                    jobs.append(Job(entry, entry_ids, lambda job: loop.call_soon_threadsafe(settle, job)))
                    batcher.submit(jobs[-1])
            except (QueueFull, Closed) as exc:
                raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
            if not await answered_or_left(request, answer):
                raise ClientLeft
        except ClientLeft:
            for job in jobs:  # rows not yet in a batch are dropped now
                batcher.cancel(job)
            return JSONResponse({"error": "the client disconnected"}, status_code=499)
        except BaseException:  # cancelled, or refused midway: no member's rows go on
            for job in jobs:
                batcher.cancel(job)
            raise
        finally:
            limits.give(client, count)
        errors = [job.error for job in jobs if job.error is not None]
        if any(isinstance(e, Closed) for e in errors):
            fail(503, str(next(e for e in errors if isinstance(e, Closed))))
        if errors:  # the worker logged it; clients learn that it failed, not how
            fail(500, "the model failed on the batch holding this request; the server's log says why.")
        return answer_body(req.prompt, entries, [job.logits for job in jobs])

    @app.get("/prompts")
    async def prompts(request: Request):
        authenticate(request)
        return {"prompts": [public_info(r) for r in bank.runs()],
                "ensembles": {name: list(members) for name, members in bank.ensembles().items()}}

    @app.post("/prompts", status_code=201, openapi_extra=_schema(AddPromptRequest))
    async def add_prompt(request: Request):
        authorize(request, "added")
        req = await parse(request, AddPromptRequest)
        if req.path is not None:
            fail(400, "POST /prompts takes no path: give the run folder's name inside the server's prompts "
                      'directory, {"name": NAME, "run": FOLDER}.')
        try:
            run_dir = resolve_run(settings.prompts_dir, req.run if req.run is not None else req.name)
            entry = await run_in_threadpool(bank.add, req.name, run_dir)
        except DuplicateName as exc:
            fail(409, str(exc))
        except XlpromptError as exc:
            fail(400, str(exc))
        log.info("added prompt %s from %s", entry.name, entry.path)
        return public_info(entry)

    @app.delete("/prompts/{name}")
    async def remove_prompt(name: str, request: Request):
        authorize(request, "removed")
        try:
            entry = bank.remove(name)
        except KeyError as exc:
            fail(404, exc.args[0])
        except InUse as exc:
            fail(409, str(exc))
        log.info("removed prompt %s", name)
        return {"removed": entry.name}

    @app.get("/health")
    async def health():
        stats = dict(batcher.stats)
        body = {"status": "ok" if batcher.alive else "model worker stopped", "model": public_model(bank.backbone.name),
                "model_kind": bank.backbone.kind, "prompts": len(bank.names()), "ensembles": len(bank.ensembles()),
                "queued_texts": batcher.queued,
                **stats, "mean_batch": stats["texts"] / stats["batches"] if stats["batches"] else 0.0,
                "forward_passes": bank.forward_passes,  # batches split by length (--max-padding)
                "precision": bank.precision, "precision_why": bank.precision_why,
                "rows": dict(bank.rows),  # int8-checked: int8 / rechecked / fp32 rows
                "settings": {**settings.public(), "max_padding": bank.max_padding}}
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    return app


def make_server(bank: PromptBank, settings: ServeSettings | None = None, host: str = "127.0.0.1",
                port: int = 8000, log_level: str = "info", forwarded_allow_ips: str | None = None,
                ssl_certfile: str | None = None, ssl_keyfile: str | None = None):
    """A uvicorn Server for the app (`.run()` blocks; tests run it in a thread and set `should_exit`).

    Proxy headers (X-Forwarded-For) are read only from `forwarded_allow_ips` (comma-separated addresses);
    without it none are, so no caller can choose the address its per-client limit is kept under. A
    loopback `host` allows only loopback Host headers unless the settings name others."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise XlpromptError("xlprompt serve needs uvicorn: pip install 'xlprompt[serve]'.") from exc
    from .access import is_loopback

    settings = settings or ServeSettings()
    if settings.allowed_hosts is None and is_loopback(host):
        settings.allowed_hosts = LOOPBACK_HOSTS
    app = create_app(bank, settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM/SIGINT: queued requests run now, then the drain ends
            app.state.batcher.hurry()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            lifespan="on", timeout_graceful_shutdown=settings.drain_seconds,
                            proxy_headers=bool(forwarded_allow_ips), forwarded_allow_ips=forwarded_allow_ips or "",
                            limit_concurrency=settings.max_connections, ssl_certfile=ssl_certfile,
                            ssl_keyfile=ssl_keyfile)
    return Server(config)


def check_port(host: str, port: int) -> None:
    """Fail before loading any model when the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise XlpromptError(f"--host {host} does not resolve: {exc}.") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise XlpromptError(f"Cannot listen on {host}:{port} ({exc.strerror}): choose another --port "
                                "or stop the server using it.") from exc
