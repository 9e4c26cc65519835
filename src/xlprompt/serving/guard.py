"""What a request passes before any endpoint does work: the Host allow-list, the body's size and arrival
deadline (the `Guard` middleware, before anything is parsed), then JSON that says it is JSON and nests
shallowly (`parse`, before the parser runs)."""
from __future__ import annotations

import asyncio
import json
import re

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException


def fail(status: int, message: str):
    raise HTTPException(status, message)


class Guard:
    """What every request passes before any endpoint runs (pure ASGI, so nothing is parsed yet): the Host
    header against the allow-list, then the body read whole within a byte limit (also for chunked bodies
    that declare no length) and a deadline, so a slow or oversized sender costs a timer, not a worker."""

    def __init__(self, app, limit: int, seconds: float, hosts: tuple[str, ...] | None = None):
        self.app, self.limit, self.seconds = app, limit, seconds
        self.hosts = {h.lower() for h in hosts} if hosts is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None and _host_name(headers.get(b"host", b"")) not in self.hosts:
            return await _refuse(scope, receive, send, 421, "this server answers only requests addressed to "
                                 "localhost (Host header): a loopback server refuses other names.")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        body, more, size = [], True, 0
        deadline = asyncio.get_running_loop().time() + self.seconds
        while more:
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except asyncio.TimeoutError:
                return await _refuse(scope, receive, send, 408, f"the request body took longer than "
                                     f"{self.seconds:g} s to arrive: send it at once.")
            if message["type"] != "http.request":
                break
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._too_large(scope, receive, send)
        whole, sent = b"".join(body), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        await _refuse(scope, receive, send, 413, f"request body exceeds {self.limit} bytes: send fewer or shorter "
                                                 "texts.")


async def _refuse(scope, receive, send, status: int, message: str):
    # a body cut off by its deadline leaves the connection mid-request: close it (uvicorn reads the rest of
    # a refused oversized body itself, so that client still gets its 413 rather than a reset)
    headers = {"Connection": "close"} if status == 408 else None
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


def _host_name(header: bytes) -> str:
    """`localhost:8000` -> localhost, `[::1]:8000` -> ::1."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
JSON_DEPTH = 16  # a request needs 2 levels ({"texts": [...]}); the limit only keeps the parser's recursion small
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, unrolled so it runs at C speed
_NESTING = np.zeros(256, dtype=np.int8)
_NESTING[[ord("["), ord("{")]], _NESTING[[ord("]"), ord("}")]] = 1, -1


def json_depth(body: bytes, stop: int | None = None) -> int:
    """The deepest nesting of [ and { outside strings (milliseconds for a 6 MB body); with `stop`, counting
    ends at the first chunk that goes deeper than it."""
    opening = body.count(b"[") + body.count(b"{")
    if stop is not None and opening <= stop:  # cannot nest deeper than the brackets it has: no scan needed
        return opening
    steps = _NESTING[np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)]
    depth, level = 0, 0
    for start in range(0, len(steps), 1 << 16):
        running = np.cumsum(steps[start:start + (1 << 16)], dtype=np.int64) + level
        depth, level = max(depth, int(running.max())), int(running[-1])
        if stop is not None and depth > stop:
            break
    return depth


def error_list(errors) -> str:
    parts = []
    for e in errors[:10]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


async def parse(request: Request, model):
    """The body as `model`. It must say it is JSON (a web page can send text/plain across origins without
    asking first; it cannot send application/json), be nested at most JSON_DEPTH deep (checked before
    parsing), and large bodies are parsed off the event loop."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        fail(415, "send the body as JSON with 'Content-Type: application/json' (curl: -H 'Content-Type: "
                  "application/json').")
    body = await request.body()
    if json_depth(body, stop=JSON_DEPTH) > JSON_DEPTH:
        fail(400, f"the request body nests deeper than {JSON_DEPTH} levels: a request is "
                  '{"prompt": NAME, "texts": [TEXT, ...]}.')

    def decode():
        try:
            return model.model_validate(json.loads(body))
        except ValidationError:  # a ValueError too, but the body was JSON: 422 below
            raise
        except (ValueError, UnicodeDecodeError, RecursionError):
            fail(400, "the request body is not valid JSON.")

    try:
        return decode() if len(body) < 65536 else await run_in_threadpool(decode)
    except ValidationError as exc:
        fail(422, error_list(exc.errors()))
