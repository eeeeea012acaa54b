"""What `laneway loadtest` checks before it sends anything: the endpoint's URL and that something
accepts a connection there, and the extra headers (its output paths are `laneway.outputs`' to check)."""

from __future__ import annotations

import argparse
import re
import socket
from urllib.parse import urlsplit

EXAMPLE_URL = "http://127.0.0.1:8080/v1/chat/completions"
CONNECT_TIMEOUT_S = 2.0
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def endpoint_url(text: str) -> str:
    """`--url`: an http or https URL with a host and, if it names one, a port in 1-65535."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"`{text}` does not start with http:// or https://; e.g. {EXAMPLE_URL}")
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"`{text}` names no host; e.g. {EXAMPLE_URL}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"`{text}` has no valid port (1-65535); e.g. {EXAMPLE_URL}")
    return text


def header(text: str) -> tuple[str, str]:
    """`--header 'NAME: VALUE'` as (name, value)."""
    name, sep, value = text.partition(":")
    if not sep or not _TOKEN.fullmatch(name.strip()):
        raise argparse.ArgumentTypeError(f"`{text}` is not `NAME: VALUE` with a header name before the colon; "
                                         "e.g. --header 'x-laneway-priority: high'")
    if "\r" in value or "\n" in value:
        raise argparse.ArgumentTypeError(f"`{text}`: a header value cannot hold a line break")
    return name.strip(), value.strip()


def unreachable(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why nothing accepts a TCP connection at `url`'s host and port, or None if something does."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.gaierror as error:
        return f"--url host `{host}` does not resolve ({error.strerror}); check --url"
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except ConnectionRefusedError:
        reason = "connection refused"
    except OSError as error:
        reason = error.strerror or type(error).__name__
    return f"cannot connect to {address}: {reason}; is the gateway running?"
