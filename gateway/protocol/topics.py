"""MQTT topic names: the gateway publishes only under gw/{id}/up/..., subscribes gw/{id}/down/...

Invariant: a gateway id never contains MQTT wildcards, separators or NUL (it becomes a topic
level via the broker ACL's %u); ``check_gateway_id`` enforces it for every topic built here.
"""

from __future__ import annotations

INGEST_SHARE_GROUP = "ingest"
INGEST_SUBSCRIPTION = f"$share/{INGEST_SHARE_GROUP}/gw/+/up/batch"
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
_FORBIDDEN = set("/+#\0")


def check_gateway_id(gw: str) -> str:
    """Return ``gw`` if it is usable as one topic level, else raise ValueError saying why."""
    if not isinstance(gw, str) or not gw:
        raise ValueError("gateway id must be a non-empty string")
    bad = _FORBIDDEN.intersection(gw)
    if bad or gw.startswith("$"):
        raise ValueError(
            f"gateway id {gw!r} must not contain '/', '+', '#', NUL or start with '$'"
        )
    if len(gw.encode("utf-8")) > 128:
        raise ValueError(f"gateway id {gw!r} is longer than 128 bytes")
    return gw


def up_batch(gw: str) -> str:
    return f"gw/{check_gateway_id(gw)}/up/batch"


def up_status(gw: str) -> str:
    """Retained "online"/"offline"; "offline" is also the last will."""
    return f"gw/{check_gateway_id(gw)}/up/status"


def down_ack(gw: str) -> str:
    return f"gw/{check_gateway_id(gw)}/down/ack"


def down(gw: str, name: str) -> str:
    if not name or _FORBIDDEN.intersection(name.replace("/", "")):
        raise ValueError(f"downlink name {name!r} must be non-empty without '+', '#' or NUL")
    return f"gw/{check_gateway_id(gw)}/down/{name}"


def up(gw: str, kind: str) -> str:
    """Gateway -> cloud device-management messages (replies, reports): gw/{id}/up/<kind>."""
    if not kind or _FORBIDDEN.intersection(kind) or kind in ("batch", "status"):
        raise ValueError(f"uplink message kind {kind!r} must be one topic level "
                         "(not batch/status)")
    return f"gw/{check_gateway_id(gw)}/up/{kind}"


def kind_of(topic: str) -> str | None:
    """The last level of ``gw/{id}/up|down/<kind>``, else None."""
    parts = topic.split("/")
    return parts[3] if len(parts) == 4 and parts[0] == "gw" and parts[3] else None


def down_subscription(gw: str) -> str:
    return f"gw/{check_gateway_id(gw)}/down/#"


def gateway_of(topic: str) -> str | None:
    """The gateway id of a ``gw/{id}/...`` topic (as received by ingest), else None."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[0] == "gw" and parts[1]:
        try:
            return check_gateway_id(parts[1])
        except ValueError:
            return None
    return None
