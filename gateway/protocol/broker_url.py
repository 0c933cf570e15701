"""The one grammar of broker URLs: ``mqtts://HOST[:PORT]`` (mutual TLS only, default port 8883).

Used by the gateway config (so ``edgegw check`` refuses exactly what the daemon refuses), the
uplink session, enrollment and the cloud stub's ingest and server. Refused, each with a message
that says what to write instead: any other scheme (``mqtt://`` would be plaintext; ``ssl://``,
``tls://`` and bare hosts are not accepted either, so one spelling works everywhere), a missing
host, a port outside 1-65535, user info, a path, a query or a fragment.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "DEFAULT_PORT", "SCHEME", "BrokerUrl", "BrokerUrlError", "EndpointUrl",
    "enrollment_url_for", "parse_broker_url", "parse_endpoint_url",
]

SCHEME = "mqtts"
DEFAULT_PORT = 8883
_HINT = "use mqtts://HOST:PORT, e.g. mqtts://broker.example.com:8883"


class BrokerUrlError(ValueError):
    """A broker URL outside the grammar; ``hint`` says what to write."""

    def __init__(self, message: str, hint: str = _HINT) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{host}:{self.port}"


def enrollment_url_for(url: str) -> str:
    """The cloud's enrollment/service listener next to the gateway listener ``url``: same host,
    port + 1 (``edgegw-cloud serve --port P`` opens it on P + 1 unless ``--enroll-port``)."""
    u = parse_broker_url(url)
    return str(BrokerUrl(u.host, u.port + 1))


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse ``url``; raise ``BrokerUrlError`` for anything outside the grammar."""
    if not isinstance(url, str) or not url.strip():
        raise BrokerUrlError("empty broker URL")
    if url != url.strip():
        raise BrokerUrlError(f"broker URL {url!r} has leading or trailing blanks")
    if "://" not in url:
        raise BrokerUrlError(f"broker URL {url!r} has no scheme")
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        why = "plaintext MQTT is refused" if parts.scheme == "mqtt" else "unknown scheme"
        raise BrokerUrlError(
            f"broker URL {url!r}: only mqtts:// is supported ({why}; the uplink always uses "
            "mutual TLS)"
        )
    if parts.username is not None or parts.password is not None:
        raise BrokerUrlError(f"broker URL {url!r}: no user info (identity is the certificate)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerUrlError(f"broker URL {url!r}: no path, query or fragment")
    if not parts.hostname:
        raise BrokerUrlError(f"broker URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise BrokerUrlError(f"broker URL {url!r}: bad port (1-65535)") from None
    if port == 0:
        raise BrokerUrlError(f"broker URL {url!r}: bad port (1-65535)")
    return BrokerUrl(parts.hostname, port or DEFAULT_PORT)


@dataclass(frozen=True, slots=True)
class EndpointUrl:
    """Any other endpoint URL the cloud is pointed at (a sink, a database), split once here so
    URL parsing stays in this one module. Nothing is validated beyond the split itself."""

    scheme: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None
    path: str
    query: dict[str, str]


def parse_endpoint_url(url: str) -> EndpointUrl:
    """Split ``scheme://user:pass@host:port/path?k=v``; ``ValueError`` for a bad port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: bad port (1-65535)") from None
    return EndpointUrl(
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        path=parts.path,
        query={k: v[-1] for k, v in parse_qs(parts.query).items()},
    )
