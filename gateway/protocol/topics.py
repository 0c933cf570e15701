"""The one definition of every MQTT topic (the broker's ACL in cloud_stub follows the same tree).

- gateway -> cloud: ``gw/{id}/up/batch`` (sealed batches), ``gw/{id}/up/status``
  (online/offline, also the last will; not retained: the broker refuses retained messages);
- cloud -> gateway: ``gw/{id}/down/ack`` and ``gw/{id}/down/{name}`` (commands, shadow, config,
  OTA offers); a gateway subscribes ``gw/{id}/down/#`` only;
- enrollment: ``enroll/{user}/{client}/req`` and ``.../resp`` (user = certificate CN).

Invariant: a gateway id follows the one id grammar (``edgegw.protocol.ids``), so it never
contains MQTT wildcards, separators or NUL (it becomes a topic level via the ACL's ``%u``).
"""

from __future__ import annotations

from edgegw.protocol.ids import check_gateway_id

__all__ = [
    "ENROLL_SHARE_GROUP",
    "ENROLL_SUBSCRIPTION",
    "EVERY_DOWN",
    "EVERY_ENROLL_REQUEST",
    "EVERY_ENROLL_RESPONSE",
    "EVERY_GATEWAY",
    "EVERY_UP",
    "INGEST_SHARE_GROUP",
    "INGEST_SUBSCRIPTION",
    "OWN_DOWN",
    "OWN_ENROLL_REQUEST",
    "OWN_ENROLL_RESPONSE",
    "OWN_UP",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "check_gateway_id",
    "down",
    "down_ack",
    "down_subscription",
    "enroll_request",
    "enroll_request_parts",
    "enroll_response",
    "every_up",
    "gateway_of",
    "ingest_subscription",
    "kind_of",
    "shared",
    "up",
    "up_batch",
    "up_status",
]

INGEST_SHARE_GROUP = "ingest"
ENROLL_SHARE_GROUP = "enroll"
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
_FORBIDDEN = set("/+#\0")


def ingest_subscription(group: str = INGEST_SHARE_GROUP) -> str:
    """The ingest's shared subscription to every gateway's batches."""
    return f"$share/{group}/gw/+/up/batch"



def shared(topic_filter: str, group: str = "+") -> str:
    """The MQTT v5 shared-subscription form of ``topic_filter``."""
    return f"$share/{group}/{topic_filter}"


# Topic filters of the broker ACL (Mosquitto: %u = username = certificate CN, %c = client id).
EVERY_UP = "gw/+/up/#"
EVERY_DOWN = "gw/+/down/#"
OWN_UP = "gw/%u/up/#"
#: every gateway topic (denied to the bootstrap identity outright)
EVERY_GATEWAY = "gw/#"
OWN_DOWN = "gw/%u/down/#"
EVERY_ENROLL_REQUEST = "enroll/+/+/req"
EVERY_ENROLL_RESPONSE = "enroll/+/+/resp"
OWN_ENROLL_REQUEST = "enroll/%u/%c/req"
OWN_ENROLL_RESPONSE = "enroll/%u/%c/resp"

INGEST_SUBSCRIPTION = ingest_subscription()
ENROLL_SUBSCRIPTION = shared(EVERY_ENROLL_REQUEST, ENROLL_SHARE_GROUP)


def enroll_request(user: str, client_id: str) -> str:
    return f"enroll/{user}/{client_id}/req"


def enroll_response(user: str, client_id: str) -> str:
    return f"enroll/{user}/{client_id}/resp"


def enroll_request_parts(topic: str) -> tuple[str, str] | None:
    """(user, client id) of an ``enroll/{user}/{client}/req`` topic, else None."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "enroll" or parts[3] != "req":
        return None
    return parts[1], parts[2]


def up_batch(gw: str) -> str:
    return f"gw/{check_gateway_id(gw)}/up/batch"


def up_status(gw: str) -> str:
    """"online"/"offline" (not retained); "offline" is also the last will."""
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


def every_up(kind: str) -> str:
    """What the cloud subscribes to for one kind of gateway -> cloud message: gw/+/up/<kind>."""
    if not kind or _FORBIDDEN.intersection(kind):
        raise ValueError(f"uplink message kind {kind!r} must be one topic level")
    return f"gw/+/up/{kind}"


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
