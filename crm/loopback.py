"""An ASGI app served by uvicorn on 127.0.0.1 in a thread of the calling process: the group demo's gateway
(crm/groupdemo.py), and the tests' gateways and platforms' loopback servers, all start and stop this way."""

from __future__ import annotations

import socket
import threading
import time


class Loopback:
    """`app` on a free 127.0.0.1 port (`.port`) until `stop()`."""

    def __init__(self, app):
        import uvicorn

        sock = socket.socket()
        # accepted connections inherit it: uvicorn writes a response's head and body separately, and
        # without it Nagle holds the body for the client's delayed ACK (~40 ms a request)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
