"""The pipeline's Prefect flows, one module each (the README's tree lists them).

Prefect's ``Flow.serialize_parameters`` imports FastAPI (~0.4 s, most of a small command's wait) to JSON-encode a
run's parameters for the server. Every flow here takes only JSON's own values (str, int, float, bool, None, and
lists and dicts of them), which FastAPI's encoder returns as they are; those are returned without the import.
Any other value (a datetime, a tuple, a model) still goes through Prefect's own encoding.
"""

from __future__ import annotations

from prefect.flows import Flow

_PLAIN = (str, int, float, bool, type(None))


def _plain(value) -> bool:
    """A value FastAPI's jsonable_encoder returns unchanged (exact types: an Enum or a tuple it converts)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is list:
        return all(_plain(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


_prefect_serialize_parameters = Flow.serialize_parameters


def _serialize_parameters(self, parameters):
    if not (self.ismethod or self.isclassmethod) and all(_plain(v) for v in parameters.values()):
        return dict(parameters)
    return _prefect_serialize_parameters(self, parameters)


Flow.serialize_parameters = _serialize_parameters
