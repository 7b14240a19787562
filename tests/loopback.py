"""An ASGI app served by uvicorn on 127.0.0.1 in a thread of the test process: the test gateways and the
platforms' loopback servers (gateway.py, top_server.py, shopify_server.py) all start and stop this way. The
class is the product's own (crm/loopback.py, which the group demo's gateway uses too)."""

from __future__ import annotations

from crm.loopback import Loopback

__all__ = ["Loopback"]
