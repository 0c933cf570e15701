"""Slot clean-up when something still writes into the slot: the pip of an install whose updater
was SIGKILLed keeps running, and a plain rmtree of the leftover slot then failed with
"Directory not empty" (seen in tests/ota/test_slots.py under a loaded parallel run). The
writer here is a thread standing in for that orphan pip (same file system, same race)."""

from __future__ import annotations

import threading
from pathlib import Path

from edgegw.ota import slots as slotmod


def test_a_slot_being_written_into_is_discarded_and_pruned_later(tmp_path: Path) -> None:
    slot = tmp_path / "slots" / "0.2.0"
    (slot / "lib").mkdir(parents=True)
    stop, started = threading.Event(), threading.Event()
    written = [0]

    def orphan(where: Path) -> None:
        while not stop.is_set():
            try:
                (where / f"f{written[0]}").write_bytes(b"x" * 64)
                written[0] += 1
            except OSError:
                pass  # its tree was deleted under it
            started.set()

    t = threading.Thread(target=orphan, args=(slot / "lib",), daemon=True)
    t.start()
    assert started.wait(10)
    try:
        slotmod._discard(slot)  # raises nothing while the orphan writes
        assert not slot.exists()  # the version's name is free for the retry at once
    finally:
        stop.set()
        t.join(10)
    assert written[0] > 0
    slotmod.prune(tmp_path / "slots")  # what the orphan left in the trash goes next time
    assert [p.name for p in (tmp_path / "slots").iterdir()] == []
