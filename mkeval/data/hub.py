"""Whether the Hugging Face hub can be reached, asked before a download starts.

Without network, ``datasets`` retries each request for about 25 s before it fails; a TCP
connect to the endpoint (or to the HTTPS proxy that a download would go through) answers in
at most ``CHECK_TIMEOUT`` seconds. In offline mode (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``)
nothing is checked: ``datasets`` then reads only its cache and fails at once when the
dataset is not there. No library offers this check, hence these few lines.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit

CHECK_TIMEOUT = 3.0  # seconds
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # what ``datasets`` obeys (not TRANSFORMERS_OFFLINE)
REMEMBER_SECONDS = 60.0  # an answer is reused this long: 57 MMLU subjects do not each wait for a silent network
_answers: dict[tuple[str, int], tuple[float, str | None]] = {}
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_mode() -> str | None:
    """The variable that puts the hub in offline mode (e.g. ``"HF_HUB_OFFLINE=1"``), or None."""
    for name in OFFLINE_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().upper() in _TRUE:
            return f"{name}={value}"
    return None


def endpoint() -> str:
    """The hub's URL: ``HF_ENDPOINT`` if set, else https://huggingface.co."""
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:  # pragma: no cover - a dependency of datasets
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def first_hop(url: str) -> tuple[str, int]:
    """Host and port a request to ``url`` connects to: its proxy (``HTTPS_PROXY``, ...) when one applies."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme) or urllib.request.getproxies().get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return via.hostname or "", via.port or (443 if via.scheme == "https" else 80)
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def connect(host: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection to ``host:port``; ``OSError`` if that fails within ``timeout``."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    # a thread, because name resolution has no timeout of its own
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer within {timeout:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def unreachable(timeout: float = CHECK_TIMEOUT) -> str | None:
    """Why the hub cannot be reached now (``"cannot connect to huggingface.co:443 (...)"``), or None."""
    url = endpoint()
    host, port = first_hop(url)
    known = _answers.get((host, port))
    if known is not None and time.monotonic() - known[0] < REMEMBER_SECONDS:
        return known[1]
    reason = None
    try:
        connect(host, port, timeout)
    except OSError as exc:
        via = "" if host == urlsplit(url).hostname else f" (the proxy for {url})"
        reason = f"cannot connect to {host}:{port}{via} ({exc.strerror or exc})"
    _answers[(host, port)] = (time.monotonic(), reason)
    return reason
