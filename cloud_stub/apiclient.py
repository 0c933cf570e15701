"""A small client of the cloud's JSON API, for the CLI on another machine
(``edgegw-cloud query --api https://HOST:8443``, ``gateways --api ...``).

TLS is verified against the cloud's CA (``--ca pki/ca.crt``, or the system store when not given);
the API token comes from ``--api-token-file`` or ``EDGEGW_API_TOKEN`` and is sent only as
``Authorization: Bearer``. Errors become ``ApiError`` with the server's ``detail``.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class ApiError(Exception):
    """The API refused or could not be reached; the message says why."""


def _quote(text: str) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


def query_string(params: dict[str, Any]) -> str:
    pairs = [f"{_quote(k)}={_quote(str(v))}" for k, v in params.items() if v is not None]
    return ("?" + "&".join(pairs)) if pairs else ""


class ApiClient:
    def __init__(self, base: str, token: str, ca: Path | None = None, timeout: float = 30) -> None:
        if not base.startswith("https://"):
            raise ApiError(f"--api {base!r}: use https://HOST:PORT (the API is served over TLS)")
        self.base = base.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        self.timeout = timeout

    @classmethod
    def from_args(cls, api: str, token_file: Path | None, ca: Path | None) -> ApiClient:
        if token_file is not None:
            token = token_file.read_text().strip()
        else:
            token = os.environ.get("EDGEGW_API_TOKEN", "").strip()
        if not token:
            raise ApiError("no API token: --api-token-file FILE or EDGEGW_API_TOKEN "
                           "(create one with `edgegw-cloud api-token create NAME`)")
        return cls(api, token, ca)

    def get(self, path: str, **params: Any) -> Any:
        req = urllib.request.Request(
            self.base + "/".join(_quote(p) for p in path.split("/")) + query_string(params),
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail")
            except (ValueError, AttributeError):
                detail = exc.reason
            raise ApiError(f"{self.base}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"{self.base}: {getattr(exc, 'reason', exc)}") from None
