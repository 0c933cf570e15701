"""The OTA transfer message bodies: round trip, and every malformed body is refused."""

from __future__ import annotations

from typing import Any

import pytest

from edgegw.protocol import ota_transfer as ot


def test_round_trip_every_op() -> None:
    msgs: list[Any] = [
        ot.Offer(3, "edgegw-0.2-software-7", b'{"a":1}', b"s" * 64, "0 2 * * *"),
        ot.Offer(4, "site-3-config-8", b"{}", b"s" * 64, None, {"site": "a"}),
        ot.Chunk("edgegw-0.2-software-7", 5, bytes(range(256))),
        ot.Cancel(3, "edgegw-0.2-software-7"),
    ]
    for m in msgs:
        assert ot.parse_down(m.body()) == m
    ups: list[Any] = [
        ot.Request("r-1-config-2", (0, 1, 9)),
        ot.State(3, "r-1-config-2", "downloading", bytes=65536, received=1, total=4),
        ot.State(None, "r-1-config-2", "refused", reason="bad_signature", detail="x"),
    ]
    for u in ups:
        assert ot.parse_up(u.body()) == u
    assert ups[1].progress == 0.25


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"op": "nope"},
        {"op": "offer", "rollout": "1", "release": "r", "manifest": "", "sig": ""},
        {"op": "offer", "rollout": 1, "release": "r", "manifest": "!!", "sig": ""},
        {"op": "chunk", "release": "r", "index": -1, "data": ""},
        {"op": "chunk", "release": "r", "index": True, "data": ""},
        {"op": "chunk", "release": "", "index": 0, "data": ""},
        {"op": "cancel", "release": "r"},
        {"op": "offer", "rollout": 1, "release": "r", "manifest": "", "sig": "", "labels": []},
        {"op": "offer", "rollout": 1, "release": "r", "manifest": "", "sig": "",
         "labels": {"site": 1}},
    ],
)
def test_bad_down_bodies_refused(body: Any) -> None:
    with pytest.raises(ot.TransferError) as e:
        ot.parse_down(body)
    assert e.value.reason == "bad_message"


@pytest.mark.parametrize(
    "body",
    [
        {"op": "request", "release": "r", "chunks": []},
        {"op": "request", "release": "r", "chunks": list(range(ot.MAX_REQUEST_CHUNKS + 1))},
        {"op": "request", "release": "r", "chunks": ["1"]},
        {"op": "state", "release": "r", "state": "exploded", "bytes": 0, "received": 0,
         "total": 0},
        {"op": "state", "release": "r", "state": "trial", "bytes": "0", "received": 0,
         "total": 0},
        {"op": "chunk", "release": "r", "index": 0, "data": ""},
    ],
)
def test_bad_up_bodies_refused(body: Any) -> None:
    with pytest.raises(ot.TransferError):
        ot.parse_up(body)
