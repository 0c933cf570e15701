"""Downlink message format: sealing, binding to gateway/kind/direction, expiry, replay window."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgegw.protocol import downlink as dl
from edgegw.protocol.keys import derive_data_key

GW = "gw-a"


def _pair() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())


def test_both_sides_derive_the_same_keys_and_directions_differ() -> None:
    gw_key, cloud_key = _pair()
    g_down = dl.derive_message_key(gw_key, cloud_key.public_key(), 3, GW, dl.DOWN)
    c_down = dl.derive_message_key(cloud_key, gw_key.public_key(), 3, GW, dl.DOWN)
    c_up = dl.derive_message_key(cloud_key, gw_key.public_key(), 3, GW, dl.UP)
    data = derive_data_key(cloud_key, gw_key.public_key(), 3, GW)
    assert g_down == c_down
    assert len({c_down, c_up, data}) == 3
    assert dl.derive_message_key(cloud_key, gw_key.public_key(), 3, "gw-b", dl.DOWN) != c_down


def test_round_trip_and_every_binding() -> None:
    key = bytes(range(32))
    cloud = dl.MessageCodec(key, 1, GW, dl.DOWN)
    now = dl.now_ms()
    blob = cloud.seal("command", "c1", 42, {"a": 1}, issued_ms=now, expires_ms=now + 5000)
    msg = dl.MessageCodec(key, 1, GW, dl.DOWN).open("command", blob)
    assert (msg.kind, msg.msg_id, msg.seq, msg.body, msg.issued_ms) == ("command", "c1", 42,
                                                                        {"a": 1}, now)
    reasons = {}
    for name, fn in {
        "other kind": lambda: dl.MessageCodec(key, 1, GW, dl.DOWN).open("config", blob),
        "other gateway": lambda: dl.MessageCodec(key, 1, "gw-b", dl.DOWN).open("command", blob),
        "reflected": lambda: dl.MessageCodec(key, 1, GW, dl.UP).open("command", blob),
        "other key id": lambda: dl.MessageCodec(key, 2, GW, dl.DOWN).open("command", blob),
        "bad tag": lambda: cloud.open("command", blob[:-1] + bytes([blob[-1] ^ 1])),
        "header bit": lambda: cloud.open("command", blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]),
        "short": lambda: cloud.open("command", blob[:30]),
        "expired": lambda: cloud.open("command", blob, now=now + 5001),
    }.items():
        with pytest.raises(dl.MessageError) as err:
            fn()
        reasons[name] = err.value.reason
    assert reasons == {"other kind": "auth", "other gateway": "auth", "reflected": "direction",
                       "other key id": "unknown_key", "bad tag": "auth", "header bit": "auth",
                       "short": "malformed", "expired": "expired"}


def test_replay_window_refuses_seen_and_too_old_accepts_reordered() -> None:
    w = dl.ReplayWindow(window=100)
    assert w.check(1000) is None
    w.accept(1000)
    assert w.check(1000) == "replay"
    assert w.check(950) is None  # a little out of order: fine, once
    w.accept(950)
    assert w.check(950) == "replay"
    assert w.check(900) == "replay"  # below highest - window
    w2 = dl.ReplayWindow(w.highest, w.seen, window=100)  # as reloaded from disk
    assert w2.check(1000) == "replay" and w2.check(1001) is None


def test_next_seq_is_strictly_increasing() -> None:
    a = dl.next_seq(0)
    assert dl.next_seq(a) > a
    assert dl.next_seq(10**18) == 10**18 + 1
