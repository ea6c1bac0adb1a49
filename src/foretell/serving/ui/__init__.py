"""The web application: a model catalogue, a form per model made from its input schema, results
with charts and feedback buttons, a monitoring page per model, and a sign-in page for keys."""

from __future__ import annotations

from starlette.routing import BaseRoute

from foretell.serving.dataplane import DataPlane
from foretell.serving.keys import KeyStore
from foretell.serving.ui.pages import Pages

__all__ = ["ui_routes"]


def ui_routes(plane: DataPlane, max_body_bytes: int, keys: KeyStore | None) -> list[BaseRoute]:
    """The web pages' routes, served at ``/`` and under ``/ui/``."""
    return Pages(plane, max_body_bytes, keys).routes()
