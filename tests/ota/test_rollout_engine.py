"""The rollout state machine (``edgegw_cloud.rollout``) on a real ``ota.db`` on disk.

The engine's clock, sender and online test are injected by design (the engine is a pure class
driven by ``serve``'s device manager): here the sender records what would be published and the
clock is a number the test moves. The transport itself is tested with the real broker in
``test_rollout_transfer.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgegw import pki
from edgegw.protocol import ota_transfer as ot
from edgegw_cloud.cli import main as cloud_main
from edgegw_cloud.ota import ReleaseStore
from edgegw_cloud.pki_setup import init_data_dir
from edgegw_cloud.registry import Registry
from edgegw_cloud.rollout import (
    RolloutEngine,
    RolloutError,
    RolloutStore,
    check_window,
    parse_max_failures,
    parse_waves,
    resolve_targets,
    status_text,
    summary,
    threshold_exceeded,
)

REL = "site-2-config-7"
GWS = [f"gw-{i}" for i in range(5)]


class Fleet:
    """What the engine talks to: a recording sender, an online map and a settable clock."""

    def __init__(self, tmp: Path) -> None:
        self.store = RolloutStore(tmp)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.offline: set[str] = set()
        self.t = 1_000.0
        self.during_send: Any = None  # runs inside send (another process acting meanwhile)
        self.engine = RolloutEngine(self.store, self.send, lambda rel: (b"{}", b"s" * 64),
                                    online=lambda gw: False if gw in self.offline else None,
                                    labels_of=lambda gw: {"site": f"s-{gw}"},
                                    clock=lambda: self.t, reoffer_s=30.0)

    def send(self, gw: str, body: dict[str, Any]) -> bool:
        if gw in self.offline:
            return False
        self.sent.append((gw, body))
        if self.during_send is not None:
            hook, self.during_send = self.during_send, None
            hook()
        return True

    def offers(self) -> list[str]:
        return [gw for gw, b in self.sent if b["op"] == ot.OFFER]

    def cancels(self) -> list[str]:
        return [gw for gw, b in self.sent if b["op"] == ot.CANCEL]

    def report(self, rid: int, gw: str, state: str, **kw: Any) -> None:
        self.engine.on_state(gw, ot.State(rid, REL, state, **kw))

    def states(self, rid: int) -> dict[str, str]:
        return {t.gateway: t.state for t in self.store.targets(rid)}


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    f = Fleet(tmp_path)
    yield f  # type: ignore[misc]
    f.store.close()


def test_wave_plans_and_thresholds() -> None:
    assert parse_waves("1,10%,50%,100%", 100) == [1, 10, 50, 100]
    assert parse_waves("1,10%,50%,100%", 3) == [1, 2, 3]  # 10% of 3 rounds to 1: merged
    assert parse_waves("2", 5) == [2, 5]  # the last wave always covers every target
    assert parse_waves("50", 5) == [5]
    for bad in ("0", "1,abc", "150%", "-1"):
        with pytest.raises(RolloutError):
            parse_waves(bad, 10)
    with pytest.raises(RolloutError):
        parse_waves("1", 0)
    assert parse_max_failures("10%") == "10%" and parse_max_failures(" 2 ") == "2"
    with pytest.raises(RolloutError):
        parse_max_failures("ten")
    assert not threshold_exceeded("10%", 1, 10)  # 10% is allowed, more is not
    assert threshold_exceeded("10%", 2, 10)
    assert threshold_exceeded("0", 1, 50) and not threshold_exceeded("2", 2, 3)
    assert check_window("0-59  2-4 * * *") == "0-59 2-4 * * *"
    for bad in ("2-4 * * *", "99 * * * *"):
        with pytest.raises(RolloutError):
            check_window(bad)


def test_waves_advance_in_order_and_complete(fleet: Fleet) -> None:
    r = fleet.store.create(REL, 7, GWS, selector="all", waves="1,40%,100%", max_failures="0",
                           window="* 2-4 * * *")
    assert r.waves == [1, 2, 5]
    assert fleet.offers() == []  # nothing is sent before the engine runs
    fleet.engine.tick()
    assert fleet.offers() == ["gw-0"]
    offer = ot.parse_down(fleet.sent[0][1])
    assert isinstance(offer, ot.Offer) and offer.rollout == r.id and offer.window == "* 2-4 * * *"
    assert offer.labels == {"site": "s-gw-0"}  # the gateway's registry labels travel with it
    fleet.engine.tick()
    assert fleet.offers() == ["gw-0"], "an unanswered offer is not repeated before reoffer_s"
    fleet.report(r.id, "gw-0", "downloading", received=3, total=10)
    assert fleet.offers() == ["gw-0"], "wave 2 waits until wave 1 is finished"
    fleet.report(r.id, "gw-0", "committed", version="0.2")
    assert fleet.offers() == ["gw-0", "gw-1"]
    fleet.report(r.id, "gw-1", "committed")
    assert fleet.offers()[2:] == ["gw-2", "gw-3", "gw-4"]
    for gw in GWS[2:]:
        fleet.report(r.id, gw, "committed")
    r = fleet.store.get(r.id)
    assert r.state == "completed" and r.wave == 2
    assert set(fleet.states(r.id).values()) == {"committed"}
    assert "committed (0.2)" in status_text(r, fleet.store.targets(r.id))


def test_failure_threshold_halts_and_resume_accepts_failures(fleet: Fleet) -> None:
    r = fleet.store.create(REL, 7, GWS, selector="all", waves="1,100%", max_failures="10%")
    fleet.engine.tick()
    fleet.report(r.id, "gw-0", "refused", reason="bad_signature", detail="not our key")
    r = fleet.store.get(r.id)
    assert r.state == "halted" and "failure threshold" in (r.reason or "")
    for _ in range(3):
        fleet.t += 60
        fleet.engine.tick()
    assert fleet.offers() == ["gw-0"], "a halted rollout offered to a later wave"
    assert not fleet.store.may_download("gw-1", REL), "chunks for a wave not started"
    text = status_text(r, fleet.store.targets(r.id))
    assert "refused: bad_signature (not our key)" in text and "halted" in text
    fleet.store.resume(r.id)
    fleet.engine.tick()
    assert sorted(fleet.offers()[1:]) == GWS[1:]
    # one more failure in the 5-gateway wave is 20% > 10%: halts again
    fleet.report(r.id, "gw-1", "committed")
    fleet.report(r.id, "gw-2", "rolled_back", reason="health_gate")
    assert fleet.store.get(r.id).state == "halted"
    assert summary(fleet.store.get(r.id), fleet.store.targets(r.id))["counts"] == {
        "refused": 1, "committed": 1, "rolled_back": 1, "offered": 2}


def test_operator_halt_resume_and_cancel(fleet: Fleet) -> None:
    r = fleet.store.create(REL, 7, GWS, selector="all", waves="2,100%", max_failures="50%")
    fleet.engine.tick()
    assert fleet.offers() == ["gw-0", "gw-1"]
    fleet.store.halt(r.id)
    with pytest.raises(RolloutError):
        fleet.store.halt(r.id)
    fleet.report(r.id, "gw-0", "committed")
    fleet.report(r.id, "gw-1", "committed")
    fleet.engine.tick()
    assert fleet.offers() == ["gw-0", "gw-1"], "halted, yet wave 2 was offered"
    fleet.store.resume(r.id)
    fleet.engine.tick()
    assert fleet.offers()[2:] == ["gw-2", "gw-3", "gw-4"]
    fleet.report(r.id, "gw-2", "downloading", received=1, total=4)
    fleet.report(r.id, "gw-3", "trial")
    fleet.offline.add("gw-4")  # offered, then went away
    fleet.store.cancel(r.id)
    fleet.engine.tick()
    # downloading gets a cancel; a trial finishes on its own; offline gw-4 gets it later
    assert fleet.cancels() == ["gw-2"]
    fleet.report(r.id, "gw-2", "cancelled")
    fleet.report(r.id, "gw-3", "committed")
    fleet.offline.discard("gw-4")
    fleet.engine.on_connect("gw-4")
    assert fleet.cancels() == ["gw-2", "gw-4"]
    fleet.report(r.id, "gw-4", "cancelled")
    assert fleet.states(r.id) == {"gw-0": "committed", "gw-1": "committed",
                                  "gw-2": "cancelled", "gw-3": "committed",
                                  "gw-4": "cancelled"}
    with pytest.raises(RolloutError):
        fleet.store.resume(r.id)


def test_cancel_before_offer_marks_pending_cancelled(fleet: Fleet) -> None:
    r = fleet.store.create(REL, 7, GWS[:3], selector="all", waves="1,100%")
    fleet.engine.tick()
    fleet.store.cancel(r.id)
    fleet.engine.tick()
    assert fleet.states(r.id) == {"gw-0": "offered", "gw-1": "cancelled", "gw-2": "cancelled"}
    assert fleet.cancels() == ["gw-0"] and fleet.offers() == ["gw-0"]
    fleet.engine.tick()
    assert fleet.cancels() == ["gw-0"], "a cancel repeated before reoffer_s"
    fleet.t += 31  # unanswered: told again
    fleet.engine.tick()
    assert fleet.cancels() == ["gw-0", "gw-0"]
    fleet.report(r.id, "gw-0", "cancelled")
    fleet.t += 31
    fleet.engine.tick()
    assert fleet.cancels() == ["gw-0", "gw-0"] and fleet.store.working() == []


def test_cancel_racing_an_offer_still_reaches_the_gateway(fleet: Fleet) -> None:
    r = fleet.store.create(REL, 7, GWS[:1], selector="all")
    fleet.during_send = lambda: fleet.store.cancel(r.id)  # `ota cancel` while offering
    fleet.engine.tick()
    assert fleet.offers() == ["gw-0"] and fleet.cancels() == ["gw-0"]
    assert fleet.states(r.id) == {"gw-0": "cancelled"}
    assert not fleet.store.may_download("gw-0", REL)


def test_offline_gateway_gets_its_offer_on_reconnect(fleet: Fleet) -> None:
    fleet.offline.add("gw-1")
    r = fleet.store.create(REL, 7, GWS[:3], selector="all", waves="100%")
    fleet.engine.tick()
    assert fleet.offers() == ["gw-0", "gw-2"]
    assert fleet.states(r.id)["gw-1"] == "pending"
    # its wave started: were its offer to get through in a race, its requests are served
    assert fleet.store.may_download("gw-1", REL)
    fleet.t += 600
    fleet.engine.tick()  # still offline: nothing sent, no error
    assert fleet.offers()[2:] == ["gw-0", "gw-2"]  # the unanswered ones are offered again
    fleet.offline.discard("gw-1")
    connected_ms = int(fleet.t * 1000)
    fleet.engine.on_connect("gw-1", connected_ms)
    assert fleet.offers()[-1] == "gw-1" and fleet.states(r.id)["gw-1"] == "offered"
    # the same connection seen twice (status, then the gateway's info): one offer
    fleet.engine.on_connect("gw-1", connected_ms)
    assert fleet.offers().count("gw-1") == 1
    fleet.t += 5  # a new connection, still no answer: offered again
    fleet.engine.on_connect("gw-1", int(fleet.t * 1000))
    assert fleet.offers().count("gw-1") == 2
    # reconnecting while downloading does not restart anything (the gateway resumes itself)
    fleet.report(r.id, "gw-1", "downloading", received=2, total=9)
    n = len(fleet.sent)
    fleet.engine.on_connect("gw-1")
    assert len(fleet.sent) == n


def test_state_reports_are_idempotent_and_terminal_is_final(fleet: Fleet) -> None:
    r = fleet.store.create(REL, 7, GWS[:2], selector="all", waves="100%", max_failures="100%")
    fleet.engine.tick()
    fleet.report(r.id, "gw-0", "downloading", received=1, total=4, bytes=100)
    fleet.report(r.id, "gw-0", "downloading", received=1, total=4, bytes=100)
    fleet.report(r.id, "gw-0", "downloading", received=2, total=4, bytes=200)
    assert fleet.engine.counts["state_same"] == 1 and fleet.engine.counts["state_changed"] == 2
    t = fleet.store.target(r.id, "gw-0")
    assert t is not None and t.display() == "downloading 50%" and t.bytes == 200
    fleet.report(r.id, "gw-0", "failed", reason="install_failed", detail="pip: no space")
    fleet.report(r.id, "gw-0", "committed")  # never back from a terminal state
    fleet.report(r.id, "gw-0", "downloading", received=4, total=4)
    t = fleet.store.target(r.id, "gw-0")
    assert t is not None and t.state == "failed" and t.reason == "install_failed"
    assert fleet.engine.counts["state_terminal"] == 2
    # a report without a rollout id finds the newest rollout of that release
    fleet.engine.on_state("gw-1", ot.State(None, REL, "verifying"))
    assert fleet.states(r.id)["gw-1"] == "verifying"
    # other rollouts, other releases, other gateways: counted, nothing changes
    fleet.engine.on_state("gw-1", ot.State(r.id, "other-1-config-9", "committed"))
    fleet.engine.on_state("gw-9", ot.State(r.id, REL, "committed"))
    assert fleet.states(r.id)["gw-1"] == "verifying"
    assert fleet.engine.counts["state_wrong_release"] == 1
    assert fleet.engine.counts["state_unknown_rollout"] == 1
    # chunks only for offered, unfinished targets of an active rollout of that release
    assert fleet.store.may_download("gw-1", REL)
    assert not fleet.store.may_download("gw-0", REL)  # failed
    assert not fleet.store.may_download("gw-1", "other-1-config-9")


def test_release_already_installed_answers_under_its_old_rollout(fleet: Fleet) -> None:
    first = fleet.store.create(REL, 7, ["gw-0"], selector="gw-0")
    fleet.engine.tick()
    fleet.report(first.id, "gw-0", "committed", version="2")
    again = fleet.store.create(REL, 7, GWS[:2], selector="all", waves="100%")
    fleet.engine.tick()
    assert fleet.offers() == ["gw-0", "gw-0", "gw-1"]
    # the gateway holds it already: it answers with the outcome it recorded (rollout 1)
    fleet.report(first.id, "gw-0", "committed", version="2")
    assert fleet.states(again.id) == {"gw-0": "committed", "gw-1": "offered"}
    assert fleet.states(first.id) == {"gw-0": "committed"}
    # a report of an unknown rollout id (a wiped cloud db) goes to the open target too
    fleet.report(again.id + 7, "gw-1", "downloading", received=1, total=2)
    assert fleet.states(again.id)["gw-1"] == "downloading"
    fleet.report(again.id, "gw-1", "committed")
    assert fleet.store.get(again.id).state == "completed"


def test_wave_timeout_halts(fleet: Fleet) -> None:
    r = fleet.store.create(REL, 7, GWS[:2], selector="all", waves="1,100%", wave_timeout_s=60)
    fleet.engine.tick()
    fleet.t += 61
    fleet.engine.tick()
    r = fleet.store.get(r.id)
    assert r.state == "halted" and "wave timeout (1 gateways of wave 1" in (r.reason or "")
    assert fleet.offers() == ["gw-0"]


def test_cli_targets_and_operator_mistakes(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    paths = init_data_dir(tmp_path / "cloud")
    issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    with Registry(paths.registry_db) as reg:
        for gw in ("gw-b", "gw-a", "gw-c", "gw-x"):
            reg.provision(gw, pki.generate_ec_key().public_key(), issuer)
        reg.set_labels("gw-c", {"site": "north"})
        reg.set_labels("gw-a", {"site": "north"})
        reg.revoke("gw-x")
        assert resolve_targets(reg, "all") == ["gw-a", "gw-b", "gw-c"]
        assert resolve_targets(reg, "label:site=north") == ["gw-a", "gw-c"]
        assert resolve_targets(reg, "gw-c, gw-a") == ["gw-a", "gw-c"]
    with ReleaseStore(paths.data_dir) as store:
        rel = store.publish({"a.yaml": b"a: 1\n"}, kind="config", name="site", version="2")
    d = ["--data-dir", str(paths.data_dir)]

    def run(*argv: str) -> tuple[int, str, str]:
        rc = cloud_main(["ota", *argv, *d])
        out, err = capsys.readouterr()
        return rc, out, err

    for to, why in (("gw-q", "unknown gateway 'gw-q'"), ("gw-x", "gateway 'gw-x' is revoked"),
                    ("label:site=south", "selects no gateway")):
        rc, _, err = run("rollout", rel.release_id, "--to", to)
        assert rc == 1 and why in err, err
    rc, _, err = run("rollout", "nope", "--to", "all")
    assert rc == 1 and "no release 'nope'" in err
    rc, out, _ = run("rollout", str(rel.serial), "--to", "label:site=north", "--waves", "1",
                     "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["waves"] == [1, 2] and doc["release_id"] == rel.release_id
    assert [t["gateway"] for t in doc["targets"]] == ["gw-a", "gw-c"]
    rc, out, _ = run("status")
    assert rc == 0 and f"{rel.release_id}  running  wave 0/2  pending 2" in out, out
    assert run("halt", str(doc["id"]))[0] == 0
    rc, _, err = run("halt", str(doc["id"]))
    assert rc == 1 and "only a running one can be halted" in err
    rc, _, err = run("resume", "99")
    assert rc == 1 and "no rollout 99" in err
