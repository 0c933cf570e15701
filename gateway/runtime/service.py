"""The supervisor's extension point: a running gateway is an ordered list of services.

A service is one part of the running gateway with its own lifecycle (the data path, the device
manager, the uplink, housekeeping; later the downlink services: commands, shadow, remote config,
OTA). ``Gateway`` starts its services in list order and stops them in reverse order, so a
service may rely on every service before it in the list while it runs and while it stops.

Adding a service is one line in ``Gateway.__init__`` (``self.services.append(MyService(...))``)
plus the class. The contract:

- ``name``: a short identifier used in logs.
- ``async start()``: allocate and start; raise to refuse the start (the gateway then stops the
  services already started and exits with the error).
- ``async stop()``: release everything; must not raise for ordinary trouble (log it), must be
  safe to call when ``start`` failed half-way, and must return within a few seconds (the daemon
  bounds the whole shutdown by ``--shutdown-timeout``).
- ``stats()``: ``{section: {...}}``. Each section becomes a top-level key of ``status.json`` and
  the prefix of its Prometheus metrics (``edgegw_<section>_...``); it is called from the event
  loop and from the metrics HTTP thread, so it must only read plain attributes (no locks, no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Service"]


@runtime_checkable
class Service(Protocol):
    """One part of a running gateway with start/stop/stats (see the module doc)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> Mapping[str, Mapping[str, Any]]: ...
