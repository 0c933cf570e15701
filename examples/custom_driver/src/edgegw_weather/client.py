"""A tiny blocking client for the station's HTTP/JSON API, with errors mapped to the SDK's.

The station serves ``GET /api/v1/current`` (a JSON object of readings) and accepts
``PUT /api/v1/settings`` (a JSON object, e.g. ``{"heater": true}``); an optional bearer token
protects both. Only the standard library is used.

Error mapping (what the gateway does with each is in edgegw.sdk):
- no connection, timeout, 5xx          -> TransientError  (retried, quality comm_error)
- 401/403, 404, other 4xx              -> PermanentError  (config does not fit, config_error)
- not JSON, not an object, wrong types -> BadDataError    (counted, quality bad_data)

Blocking on purpose: the driver runs it through ``ctx.run_blocking``, off the event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from edgegw import BadDataError, PermanentError, TransientError


class StationClient:
    def __init__(self, base_url: str, *, timeout: float, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token = token

    def current(self) -> dict[str, Any]:
        """The station's current readings as a JSON object."""
        data = self._request("GET", "/api/v1/current")
        if not isinstance(data, dict):
            raise BadDataError(f"{self.base_url}/api/v1/current: expected a JSON object")
        return data

    def settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change settings; returns the station's settings after the change."""
        data = self._request("PUT", "/api/v1/settings", changes)
        if not isinstance(data, dict):
            raise BadDataError(f"{self.base_url}/api/v1/settings: expected a JSON object")
        return data

    def firmware_chunk(self, offset: int, total: int, data: bytes) -> dict[str, Any]:
        """Upload one piece of a firmware image; the station flashes it once all arrived."""
        reply = self._request("PUT", f"/api/v1/firmware?offset={offset}&total={total}", raw=data)
        if not isinstance(reply, dict):
            raise BadDataError(f"{self.base_url}/api/v1/firmware: expected a JSON object")
        return reply

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, raw: bytes | None = None
    ) -> Any:
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        payload = raw
        if raw is not None:
            headers["Content-Type"] = "application/octet-stream"
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=payload, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # an HTTPError holds the open response; close it or leak the socket
            raise _http_error(url, exc.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"{url}: {reason}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadDataError(f"{url}: not JSON ({exc})") from None


def _http_error(url: str, status: int) -> Exception:
    if status in (401, 403):
        return PermanentError(
            f"{url}: HTTP {status}: the station refused the token (options.token)"
        )
    if status == 404:
        return PermanentError(f"{url}: HTTP 404: no weather API here (check options.url)")
    if 400 <= status < 500:
        return PermanentError(f"{url}: HTTP {status}: the station rejected the request")
    return TransientError(f"{url}: HTTP {status}")
