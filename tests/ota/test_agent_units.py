"""Pure parts of the OTA agent: the maintenance window, the chunk bitmap, the `ota:` config."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from edgegw.config import ConfigError, load_config
from edgegw.ota.agent import install_window_open
from edgegw.ota.transfer import Bitmap, prune
from edgegw.protocol.cron import CronError, cron_trigger

UTC = dt.UTC


def t(h: int, m: int, s: int = 0, day: int = 15) -> dt.datetime:
    return dt.datetime(2026, 6, day, h, m, s, tzinfo=UTC)


def test_window_open_during_a_matching_minute_else_next_fire_time() -> None:
    assert install_window_open("0 2 * * *", t(2, 0, 30))[0]
    is_open, nxt = install_window_open("0 2 * * *", t(2, 1, 0))
    assert not is_open and nxt == t(2, 0, day=16)
    assert install_window_open("* 2-4 * * *", t(3, 15, 20))[0]
    is_open, nxt = install_window_open("* 2-4 * * *", t(5, 0, 0))
    assert not is_open and nxt == t(2, 0, day=16)
    is_open, nxt = install_window_open("30 1 * * 0", t(12, 0))  # Sundays 01:30 (15th: Monday)
    assert not is_open and nxt.weekday() == 6 and (nxt.hour, nxt.minute) == (1, 30)


@pytest.mark.parametrize(("dow", "days"), [
    ("0", {6}), ("7", {6}), ("1-5", {0, 1, 2, 3, 4}), ("5-7", {4, 5, 6}), ("*/2", {6, 1, 3, 5}),
    ("sun,wed", {6, 2}), ("*", set(range(7))),
])
def test_day_of_week_follows_crontab_not_apscheduler_numbering(dow: str, days: set[int]) -> None:
    """crontab: 0 and 7 = Sunday (APScheduler 3's from_crontab would take 0 as Monday)."""
    trig = cron_trigger(f"0 12 * * {dow}")
    fired = set()
    at = t(0, 0, day=1)
    for _ in range(7):
        nxt = trig.get_next_fire_time(None, at)
        fired.add(nxt.weekday())  # Python: Monday = 0 ... Sunday = 6
        at = nxt + dt.timedelta(minutes=1)
    assert fired == days


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "* * * * 8", "* * * * 5-2"])
def test_bad_windows_refused(bad: str) -> None:
    with pytest.raises(CronError):
        cron_trigger(bad)


def test_bitmap_round_trip_and_missing() -> None:
    b = Bitmap(11)
    for i in (0, 3, 10):
        b.add(i)
    again = Bitmap(11, b.hex())
    assert again.count() == 3 and 10 in again and 4 not in again and 11 not in again
    assert again.missing() == [1, 2, 4, 5, 6, 7, 8, 9]


def test_ota_config_section_checked_with_location(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("gateway: {id: gw1}\nota: {max_rate: 32KiB, window: '0 2 * * *'}\n")
    cfg = load_config(good)
    assert cfg.ota.max_rate == 32 * 1024 and cfg.ota.chunks_in_flight == 4 and cfg.ota.enabled
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: gw1}\nota:\n  window: '61 * * * *'\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value.issues[0])
    assert "bad.yaml:3:" in text and "ota.window" in text and "61" in text, text


def test_prune_keeps_the_newest_release_folders_and_the_current_one(tmp_path: Path) -> None:
    for i in range(12):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "state.json").write_text("{}")
        os.utime(d / "state.json", (1000 + i, 1000 + i))
    gone = prune(tmp_path, "r0", keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0", "r10", "r11"]
    assert len(gone) == 9
