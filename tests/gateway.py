"""A real SMS/chat gateway for tests and the benchmark: an ASGI app served by uvicorn on 127.0.0.1.

It is scripted per message: `script[message_id]` is a list of behaviours used one per request
('ok', ('status', 503), ('retry_after', 429, seconds), ('slow', seconds), ('status', 400, 'bad number'),
('broken_body',): accepted, answered 200 with a body that does not decode);
without a script every request is answered 200 after `delay` seconds; with `down` set, every one 503; after `hold()` every one waits
unanswered until `release()`. Like a real gateway it honours
Idempotency-Key: a message is *accepted* once, and a repeat of an accepted key gets 200 again
without being accepted twice (`repeats` counts those).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import defaultdict
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from loopback import Loopback


class Gateway:
    def __init__(self, delay: float = 0.0, secret: str = ""):
        self.delay = delay
        self.secret = secret         # set: every request must carry a good Standard Webhooks signature (else 401)
        self.bad_signatures = 0
        self.script: dict[str, list] = defaultdict(list)
        self.accepted: dict[str, dict] = {}
        self.requests: list[tuple[float, str, int]] = []      # (time, key, status answered)
        self.repeats = 0
        self.missing_key = 0
        self.down = False            # True: every request answered 503, as a gateway in an outage
        self.gate = threading.Event()    # cleared (`hold()`): every request waits until it is set again
        self.gate.set()
        self.held = 0                    # requests that came while the gate was closed
        self.in_progress = 0             # requests being answered now
        self._server: Loopback | None = None
        self.url = ""

    # ------------------------------------------------------------------ app
    async def _send(self, request: Request):
        self.in_progress += 1
        try:
            return await self._answer(request)
        finally:
            self.in_progress -= 1

    async def _answer(self, request: Request):
        # the key is the message id, percent-encoded where it is not printable ASCII (docs/rules.md §7)
        key = unquote(request.headers.get("idempotency-key") or "")
        if self.secret:
            from standardwebhooks.webhooks import Webhook

            try:
                Webhook(self.secret).verify(await request.body(), dict(request.headers))
            except Exception:
                self.bad_signatures += 1
                return PlainTextResponse("bad signature", status_code=401)
        payload = await request.json()
        if not self.gate.is_set():
            self.held += 1
            while not self.gate.is_set():
                await asyncio.sleep(0.02)
        if not key or key != payload.get("message_id"):
            self.missing_key += 1
            return PlainTextResponse("missing Idempotency-Key", status_code=400)
        behaviour = self.script[key].pop(0) if self.script.get(key) else "ok"
        if self.down:
            behaviour = ("status", 503, "service unavailable")
        if behaviour == "ok" or behaviour[0] == "slow":
            await asyncio.sleep(self.delay if behaviour == "ok" else behaviour[1])
            if key in self.accepted:
                self.repeats += 1
            else:
                self.accepted[key] = payload
            self.requests.append((time.monotonic(), key, 200))
            return JSONResponse({"id": key, "status": "accepted"})
        if behaviour[0] == "broken_body":
            # accepted, but the answer's body does not decode (a gateway with a broken Content-Encoding)
            self.accepted.setdefault(key, payload)
            self.requests.append((time.monotonic(), key, 200))
            return Response(b"this is not gzip", headers={"content-encoding": "gzip"})
        status = behaviour[1]
        self.requests.append((time.monotonic(), key, status))
        if behaviour[0] == "retry_after":
            return PlainTextResponse("slow down", status_code=status, headers={"Retry-After": str(behaviour[2])})
        return PlainTextResponse(behaviour[2] if len(behaviour) > 2 else "error", status_code=status)

    # ------------------------------------------------------------------ server
    def start(self) -> "Gateway":
        self._server = Loopback(Starlette(routes=[Route("/send", self._send, methods=["POST"])]))
        self.url = f"http://127.0.0.1:{self._server.port}/send"
        return self

    def hold(self) -> None:
        """Requests from now on wait, unanswered, until `release()` (a sender that is mid-send)."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.gate.set()
        if self._server:
            self._server.stop()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/send"
