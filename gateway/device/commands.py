"""Commands from the cloud (RPC): write a point, read points now, ping, reload config, restart,
and actions drivers declare with ``@driver_command``.

Message (``gw/{id}/down/command``): body ``{"device": D, "action": A, "args": {...}}``; the
command id is the message id, its deadline the message's ``expires_ms`` (an expired command is
refused by the downlink before it gets here: never executed). Gateway-wide actions (``ping``,
``reload_config``, ``restart``) use the device ``-``.

Exactly one final result per command id, sent on ``gw/{id}/up/command``:
``{"status": "ok", "value": V}`` | ``{"status": "refused", "reason": R}`` |
``{"status": "unavailable", "reason": R}`` | ``{"status": "timed_out", "reason": R}``.

At most once: before anything runs, the id is committed as ``started`` in ``devmgmt.db``; the
result is committed before the reply is published. A redelivered id (QoS1 duplicate, the cloud
asking again after a lost reply, a gateway restart between execute and reply) is answered with
the remembered result and never executed again. An id found ``started`` without a result (the
gateway died while executing it) is answered ``refused`` ("interrupted"), not re-executed: the
device may or may not have changed, which the reason says.

Writes go through the device's bus scheduler ahead of polls (like rule writes) and are checked
first: unknown device, point not in the driver's writable points, then the driver's own checks
(Modbus: ``writable``, ``min``/``max``) before any byte is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from edgegw.device.downlink import DownlinkService
from edgegw.device.host import GatewayHost
from edgegw.model import Value
from edgegw.protocol import downlink as dl
from edgegw.sdk import DriverError, PermanentError, PointValue, TransientError, driver_commands

log = logging.getLogger("edgegw.commands")

GATEWAY = "-"
CRASHPOINT_ENV = "EDGEGW_CRASHPOINT"


def crashpoint(name: str) -> None:
    """Fault injection for tests: SIGKILL this process at ``name`` if EDGEGW_CRASHPOINT says so."""
    if os.environ.get(CRASHPOINT_ENV) == name:
        log.error("crash point %s: killing the process (fault injection)", name)
        os.kill(os.getpid(), signal.SIGKILL)


def ok(value: Any = None) -> dict[str, Any]:
    return {"status": "ok", "value": value}


def refused(reason: str) -> dict[str, Any]:
    return {"status": "refused", "reason": reason}


def unavailable(reason: str) -> dict[str, Any]:
    return {"status": "unavailable", "reason": reason}


def jsonable(v: Any) -> Any:
    if isinstance(v, PointValue):
        return {"value": jsonable(v.value), "quality": str(v.quality.name).lower()}
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


class CommandHandler:
    """Registered for kind ``command`` on the downlink service."""

    def __init__(self, gateway: GatewayHost, service: DownlinkService) -> None:
        self.gw = gateway
        self.svc = service
        #: set by the remote-config feature (the ``reload_config`` action)
        self.reload_config: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self._running: set[str] = set()
        self.counts: dict[str, int] = defaultdict(int)

    async def __call__(self, msg: dl.Message) -> None:
        cmd_id = msg.msg_id
        if cmd_id in self._running:  # a duplicate while the first copy runs: it will answer
            self.counts["duplicates"] += 1
            return
        state = self.svc.state
        assert state is not None
        self._running.add(cmd_id)
        try:
            prior = await self.svc.db(state.command_begin, cmd_id, dl.now_ms(), msg.expires_ms)
            if prior is not None:
                self.counts["duplicates"] += 1
                result = prior["result"]
                if prior["state"] != "done" or result is None:
                    result = refused("interrupted: the gateway restarted while executing this "
                                     "command; not executed again (at most once), the device "
                                     "may or may not have changed")
                    await self.svc.db(state.command_done, cmd_id, result)
                log.info("command %s seen before; answering with its result", cmd_id)
            else:
                result = await self._execute(msg)
                self.counts[f"result_{result['status']}"] += 1
                crashpoint("command.after_execute")
                await self.svc.db(state.command_done, cmd_id, result)
                crashpoint("command.before_reply")
            self.svc.reply(dl.COMMAND, cmd_id, result)
        finally:
            self._running.discard(cmd_id)

    async def _execute(self, msg: dl.Message) -> dict[str, Any]:
        body = msg.body
        device = body.get("device")
        action = body.get("action")
        args = body.get("args") or {}
        if not isinstance(device, str) or not isinstance(action, str) or not isinstance(args, dict):
            return refused("malformed command: needs device (str), action (str), args (object)")
        remaining = (msg.expires_ms - dl.now_ms()) / 1000.0
        if remaining <= 0:
            return {"status": "timed_out", "reason": "deadline passed before execution"}
        log.info("command %s: %s %s %s", msg.msg_id, device, action, args)
        try:
            async with asyncio.timeout(remaining):
                if device == GATEWAY:
                    return await self._gateway_action(action, args)
                return await self._device_action(device, action, args)
        except TimeoutError:
            return {"status": "timed_out", "reason": f"not done within the deadline "
                                                     f"({remaining:.1f} s left on arrival)"}

    # ------------------------------------------------------------------ gateway actions
    async def _gateway_action(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action == "ping":
            return ok({"pong": dl.now_ms(), "gateway": self.gw.gateway_id,
                       "version": self.gw.software_version})
        if action == "reload_config":
            if self.reload_config is None:
                return refused("remote configuration is not available on this gateway")
            return await self.reload_config()
        if action == "restart":
            if not self.gw.request_restart():
                return refused("this gateway cannot restart itself")
            return ok("restarting")
        return refused(f"unknown gateway action {action!r} (ping, reload_config, restart)")

    # ------------------------------------------------------------------ device actions
    def _device_cfg(self, device: str) -> Any | None:
        return next((d for d in self.gw.cfg.devices if d.id == device), None)

    async def _device_action(self, device: str, action: str, args: dict[str, Any]
                             ) -> dict[str, Any]:
        dev = self._device_cfg(device)
        if dev is None:
            known = ", ".join(d.id for d in self.gw.cfg.devices) or "none"
            return refused(f"unknown device {device!r} (known: {known})")
        if not dev.enabled:
            return unavailable(f"device {device!r} is disabled in the configuration")
        entry = self.gw.drivers.get(dev.driver)
        if entry is None or entry.cls is None:
            return unavailable(f"driver {dev.driver!r} of {device!r} is not loaded")
        if action == "write":
            point, value = args.get("point"), args.get("value")
            if not isinstance(point, str):
                return refused("write needs args point (str) and value")
            return await self.write(device, point, value)
        if action == "read":
            return await self._read(device, args.get("points"))
        if action == "ping":
            t0 = asyncio.get_running_loop().time()
            res = await self._read(device, None)
            if res["status"] == "ok":
                res["value"] = {"latency_ms": round((asyncio.get_running_loop().time() - t0)
                                                    * 1000, 2)}
            return res
        cmds = driver_commands(entry.cls)
        spec = cmds.get(action)
        if spec is None:
            names = ", ".join(["write", "read", "ping", *sorted(cmds)])
            return refused(f"device {device!r} ({dev.driver}) has no action {action!r} "
                           f"(available: {names})")
        parsed: Any = args
        if spec.args is not None:
            try:
                parsed = spec.args.model_validate(args)
            except ValidationError as exc:
                return refused(f"bad arguments for {action}: "
                               + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: "
                                           f"{e['msg']}" for e in exc.errors()))

        async def run(driver: Any) -> Any:
            inner = getattr(driver, "inner", driver)
            ensure = getattr(driver, "ensure_open", None)
            if ensure is not None:
                await ensure()
            return await getattr(inner, spec.method)(parsed)

        return await self._call(device, run, lambda v: ok(jsonable(v)))

    async def write(self, device: str, point: str, value: Value) -> dict[str, Any]:
        """A checked write through the bus scheduler (also used by the shadow)."""
        dev = self._device_cfg(device)
        if dev is None:
            return refused(f"unknown device {device!r}")
        entry = self.gw.drivers.get(dev.driver)
        if entry is not None and entry.cls is not None:
            try:
                options = entry.cls.Options.model_validate(dev.options or {})
                writable = entry.cls.writable_points(options)
            except Exception:
                writable = None
            if writable is not None and point not in writable:
                known = ", ".join(writable) or "none"
                return refused(f"point {point!r} of {device!r} is not writable "
                               f"(writable points: {known})")

        async def run(driver: Any) -> None:
            await driver.write(point, value)

        return await self._call(device, run, lambda _v: ok(value))

    async def _read(self, device: str, points: Any) -> dict[str, Any]:
        if points is not None and (not isinstance(points, list)
                                   or not all(isinstance(p, str) for p in points)):
            return refused("read args: points must be a list of point names")

        async def run(driver: Any) -> Any:
            read = getattr(driver, "read", None)
            if read is None:
                raise PermanentError("this device pushes its data; it cannot be read on demand")
            return await read()

        def shape(values: Any) -> dict[str, Any]:
            vals = {k: jsonable(v) for k, v in dict(values).items()}
            if points:
                missing = [p for p in points if p not in vals]
                if missing:
                    return refused(f"unknown point(s) {', '.join(missing)} "
                                   f"(known: {', '.join(vals)})")
                vals = {p: vals[p] for p in points}
            return ok(vals)

        return await self._call(device, run, shape)

    async def _call(self, device: str, fn: Any, shape: Any) -> dict[str, Any]:
        try:
            value = await self.gw.device_call(device, fn)
        except LookupError as exc:
            return unavailable(str(exc))
        except PermanentError as exc:
            return refused(str(exc))
        except (TransientError, OSError) as exc:
            return unavailable(f"{type(exc).__name__}: {exc}")
        except DriverError as exc:
            return refused(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a driver bug: refuse with what it said, keep running
            log.warning("command on %s raised %s: %s", device, type(exc).__name__, exc)
            return refused(f"{type(exc).__name__}: {exc}")
        result: dict[str, Any] = shape(value)
        return result
