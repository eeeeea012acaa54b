"""The HTTP shell: an ASGI app over the gateway core, and the process that serves it."""

from ._app import App
from ._serve import serve
from ._workers import serve_workers

__all__ = ["App", "serve", "serve_workers"]
