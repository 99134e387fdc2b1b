"""What keeps the server safe to expose: API keys compared in constant time, a cap on request
bodies, and a bounded queue in front of the in-process models."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from duma.errors import ConfigError

from .metrics import ServerMetrics
from .openai_api import ApiError, error_body

API_KEY_ENV = "DUMA_API_KEY"


def read_api_keys(flags: Sequence[str] = (), key_file: str | Path | None = None,
                  environ: dict[str, str] | None = None) -> list[str]:
    """The accepted keys: ``--api-key`` flags, one key per line of ``key_file`` (blank lines
    and ``#`` comments skipped) and ``DUMA_API_KEY``. An unreadable or empty file is an error."""
    keys = [k.strip() for k in flags if k.strip()]
    if key_file is not None:
        path = Path(key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {path}: cannot read it ({exc.__class__.__name__})",
                              "give a readable text file with one key per line") from None
        from_file = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not from_file:
            raise ConfigError(f"--api-key-file {path}: no keys in it", "write one key per line")
        keys += from_file
    env_key = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
    if env_key:
        keys.append(env_key)
    return list(dict.fromkeys(keys))


class ApiKeys:
    """Bearer keys; every configured key is compared, in constant time, on every check."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless ``authorization`` is ``Bearer <a configured key>``."""
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        accepted = False
        for key in self._keys:
            accepted |= hmac.compare_digest(given, key)
        if not accepted:
            raise ApiError(401, "missing or incorrect API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the app reads it
    (the declared length is checked first; a chunked body is counted as it arrives)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # then the client's disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        payload = json.dumps(error_body(f"the request body is over this server's limit of {self.max_bytes} bytes",
                                        code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


class Slot:
    """A turn's place among the running ones; released once, from any thread, when the turn's
    generation has really ended."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = threading.Event()
        self.started = time.perf_counter()

    def release(self) -> None:
        if self._released.is_set():
            return
        self._released.set()
        self._admission.release_threadsafe(time.perf_counter() - self.started)


class Admission:
    """``max_concurrent`` turns run at once, ``max_queue`` wait; one more is refused with 429
    and a Retry-After estimated from recent turns."""

    def __init__(self, max_concurrent: int, max_queue: int, metrics: ServerMetrics) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.metrics = metrics
        self.waiting = 0
        self.running = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recent_s: deque[float] = deque(maxlen=32)

    async def enter(self) -> Slot:
        if self._semaphore is None:  # bound to the loop that serves requests
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
            self._loop = asyncio.get_running_loop()
        if self._semaphore.locked() and self.waiting >= self.max_queue:
            raise ApiError(429, f"the server is busy: {self.running} turns running and {self.waiting} waiting; "
                           "retry later", kind="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(self.retry_after_s())})
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)
        self.running += 1
        self.metrics.in_flight.set(self.running)
        return Slot(self)

    def retry_after_s(self) -> int:
        typical = sum(self._recent_s) / len(self._recent_s) if self._recent_s else 1.0
        return max(1, min(120, math.ceil(typical * (self.waiting + 1) / self.max_concurrent)))

    def release_threadsafe(self, duration_s: float) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._release, duration_s)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    def _release(self, duration_s: float) -> None:
        assert self._semaphore is not None
        self._recent_s.append(duration_s)
        self.running -= 1
        self.metrics.in_flight.set(self.running)
        self._semaphore.release()
