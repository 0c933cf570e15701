"""OTA transfer messages on the ``ota`` downlink kind (shared by the cloud and the gateway).

They travel inside sealed device-management messages (``edgegw.protocol.downlink``): cloud ->
gateway on ``gw/{id}/down/ota``, gateway -> cloud on ``gw/{id}/up/ota``. Every body is a JSON
object with an ``op``; bytes travel base64-encoded.

Cloud -> gateway:

- ``offer``  ``{op, rollout, release, manifest, sig, window, labels}``: ``manifest`` and ``sig``
  are the exact ``manifest.json`` bytes and their Ed25519 signature (the gateway verifies them
  before it requests a single chunk); ``window`` is an optional maintenance window (cron, 5
  fields) for the install step that overrides the gateway's configured one; ``labels`` are the
  gateway's registry labels (``edgegw-cloud gateways label``) as the cloud holds them, which the
  gateway checks a label-targeted manifest against (the message is sealed end to end by the
  cloud, the same authority that signs releases; absent in older offers).
- ``chunk``  ``{op, release, index, data}``: one chunk of ``payload.tar`` (``chunk_size`` bytes,
  the last one shorter), checked against its SHA-256 in the signed manifest on arrival.
- ``cancel`` ``{op, rollout, release}``: stop downloading / do not install (an installed trial
  is not cancelled: it commits or rolls back on its own).

Gateway -> cloud:

- ``request`` ``{op, release, chunks}``: the chunk indexes the gateway wants next (pull: the
  gateway paces the transfer, which is where the bandwidth cap lives).
- ``state`` ``{op, rollout, release, state, bytes, received, total, reason, detail, version}``:
  a state change or progress report; ``reason`` is a stable refusal/failure name (see
  ``edgegw.ota.verify``), ``detail`` the human text, ``version`` the running software version.

Invariants:
- ``parse_down``/``parse_up`` accept only the ops and fields above with the right types, and
  raise ``TransferError`` (reason ``bad_message``) for anything else; a receiver counts it.
- States are the fixed list ``STATES``; ``TERMINAL`` ones end a gateway's part in a rollout.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

OFFER = "offer"
CHUNK = "chunk"
CANCEL = "cancel"
REQUEST = "request"
STATE = "state"
DOWN_OPS = (OFFER, CHUNK, CANCEL)
UP_OPS = (REQUEST, STATE)

#: per-gateway rollout states, in the order they normally happen
STATES = (
    "pending",  # cloud side only: in a wave not started yet / not offered yet
    "offered",
    "downloading",
    "verifying",
    "waiting_window",  # downloaded and verified; waiting for the maintenance window
    "installing",
    "trial",
    "committed",
    "rolled_back",
    "failed",
    "refused",
    "cancelled",
)
TERMINAL = frozenset({"committed", "rolled_back", "failed", "refused", "cancelled"})
SUCCESS = "committed"
FAILURES = frozenset({"rolled_back", "failed", "refused"})
MAX_REQUEST_CHUNKS = 64


class TransferError(ValueError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = "bad_message"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise TransferError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise TransferError(f"{what} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class Offer:
    rollout: int
    release: str
    manifest: bytes
    sig: bytes
    window: str | None = None
    labels: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {"op": OFFER, "rollout": self.rollout, "release": self.release,
                "manifest": b64(self.manifest), "sig": b64(self.sig), "window": self.window,
                "labels": self.labels}


@dataclass(frozen=True, slots=True)
class Chunk:
    release: str
    index: int
    data: bytes

    def body(self) -> dict[str, Any]:
        return {"op": CHUNK, "release": self.release, "index": self.index, "data": b64(self.data)}


@dataclass(frozen=True, slots=True)
class Cancel:
    rollout: int
    release: str

    def body(self) -> dict[str, Any]:
        return {"op": CANCEL, "rollout": self.rollout, "release": self.release}


@dataclass(frozen=True, slots=True)
class Request:
    release: str
    chunks: tuple[int, ...]

    def body(self) -> dict[str, Any]:
        return {"op": REQUEST, "release": self.release, "chunks": list(self.chunks)}


@dataclass(frozen=True, slots=True)
class State:
    rollout: int | None
    release: str
    state: str
    bytes: int = 0  # payload bytes received over the network so far (this release, all sessions)
    received: int = 0  # chunks held (verified) of ``total``
    total: int = 0
    reason: str | None = None
    detail: str | None = None
    version: str | None = None

    def body(self) -> dict[str, Any]:
        return {"op": STATE, "rollout": self.rollout, "release": self.release,
                "state": self.state, "bytes": self.bytes, "received": self.received,
                "total": self.total, "reason": self.reason, "detail": self.detail,
                "version": self.version}

    @property
    def progress(self) -> float:
        return self.received / self.total if self.total else 0.0


def is_safe_release_id(rel: str) -> bool:
    """A release id usable as a folder name on the gateway (``name-version-kind-serial``:
    ASCII letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit; <= 200)."""
    return (0 < len(rel) <= 200 and rel.isascii() and rel[0].isalnum()
            and all(c.isalnum() or c in "._-" for c in rel))


def _get(body: dict[str, Any], key: str, typ: type | tuple[type, ...], *,
         optional: bool = False) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise TransferError(f"field {key!r} missing or not {typ}")
    return value


def _release(body: dict[str, Any]) -> str:
    rel = _get(body, "release", str)
    if not rel or len(rel) > 200:
        raise TransferError("release id empty or too long")
    return rel


def _index(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise TransferError(f"{what} is not a chunk index")
    return value


def parse_down(body: Any) -> Offer | Chunk | Cancel:
    if not isinstance(body, dict):
        raise TransferError("body is not an object")
    op = body.get("op")
    if op == OFFER:
        window = _get(body, "window", str, optional=True)
        labels = _get(body, "labels", dict, optional=True)
        if labels is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise TransferError("labels must map strings to strings")
        return Offer(_get(body, "rollout", int), _release(body),
                     unb64(body.get("manifest"), "manifest"), unb64(body.get("sig"), "sig"),
                     window, labels)
    if op == CHUNK:
        return Chunk(_release(body), _index(body.get("index"), "index"),
                     unb64(body.get("data"), "data"))
    if op == CANCEL:
        return Cancel(_get(body, "rollout", int), _release(body))
    raise TransferError(f"unknown downlink op {op!r}")


def parse_up(body: Any) -> Request | State:
    if not isinstance(body, dict):
        raise TransferError("body is not an object")
    op = body.get("op")
    if op == REQUEST:
        chunks = body.get("chunks")
        if not isinstance(chunks, list) or not 0 < len(chunks) <= MAX_REQUEST_CHUNKS:
            raise TransferError(f"chunks must be a list of 1..{MAX_REQUEST_CHUNKS} indexes")
        return Request(_release(body), tuple(_index(c, "chunks[]") for c in chunks))
    if op == STATE:
        state = _get(body, "state", str)
        if state not in STATES:
            raise TransferError(f"unknown state {state!r}")
        return State(_get(body, "rollout", int, optional=True), _release(body), state,
                     _get(body, "bytes", int), _get(body, "received", int),
                     _get(body, "total", int), _get(body, "reason", str, optional=True),
                     _get(body, "detail", str, optional=True),
                     _get(body, "version", str, optional=True))
    raise TransferError(f"unknown uplink op {op!r}")
