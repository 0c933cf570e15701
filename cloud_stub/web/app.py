"""The HTTP API (JSON, OpenAPI at ``/api/openapi.json``) and the dashboard pages.

Stack: FastAPI on uvicorn. FastAPI because its OpenAPI document is generated from the same typed
endpoints that serve the requests (it cannot drift from the code), it builds on Starlette (SSE via
a streaming response, static files) and pydantic, which the project already uses; both are
maintained and widely deployed. No CDN: the chart library (uPlot) is vendored in ``static/``.

Invariants:
- Nothing is anonymous. Every ``/api/`` route and page needs an API token
  (``Authorization: Bearer egw_...``) or a dashboard session cookie (HttpOnly, Secure,
  SameSite=Strict: a cross-site form cannot ride on it). Unauthenticated API calls get 401,
  pages redirect to ``/login``. Only ``/login`` and ``/static/`` (code and styles, no data) are
  public.
- Writes (revoke, enrollment tokens) need the ``admin`` role; ``read-only`` gets 403.
- Reads run in the threadpool (blocking store and registry calls never block the event loop);
  every list is bounded by ``limit``.
- The pages are static HTML + JS that call this same JSON API: what the dashboard shows, a
  script gets from the API.
"""

# no `from __future__ import annotations`: FastAPI reads the dependency annotations (local
# Annotated aliases) at definition time

import asyncio
import json
import time
from argparse import ArgumentTypeError
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from edgegw_cloud.commands.token import parse_ttl
from edgegw_cloud.devstore import DevStore
from edgegw_cloud.pki_setup import CloudPaths
from edgegw_cloud.query import TimeSpecError, parse_time
from edgegw_cloud.registry import Registry, RegistryError
from edgegw_cloud.revocation import revoke_gateway
from edgegw_cloud.store import CloudStore
from edgegw_cloud.web.auth import Operators, Principal

STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "edgegw_session"
ONLINE_WINDOW_MS = 60_000  # without a presence message: seen by the ingest within this window
LIVE_POLL_S = 0.5
LIVE_WINDOW_MS = 10 * 60_000

StoreOpener = Callable[[], Any]  # returns a store with StoreQueries + readings(), or raises


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _time(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except TimeSpecError as exc:
        raise HTTPException(422, str(exc)) from None


class LoginRequest(BaseModel):
    username: str
    password: str


class TokenRequest(BaseModel):
    gateway_id: str = Field(description="id the gateway will enroll as")
    ttl: str = Field("1h", description="validity: 10m, 1h, 2d ...")
    reinstate: bool = Field(False, description="allow a revoked gateway id to enroll again")


class TokenResponse(BaseModel):
    gateway_id: str
    token: str = Field(description="one-time enrollment token; shown only here")
    expires_in_s: float


def create_app(
    paths: CloudPaths,
    *,
    open_store: StoreOpener | None = None,
    presence: Any = None,
) -> FastAPI:
    """The ASGI app for one cloud data dir. ``open_store`` defaults to the SQLite store."""
    if open_store is None:

        def open_store() -> Any:
            return CloudStore(paths.store_db, readonly=True)

    opener: StoreOpener = open_store
    app = FastAPI(
        title="edgegw cloud API",
        version="1",
        description="Fleet, readings, alerts and gaps of an edgegw cloud. Authenticate with "
        "`Authorization: Bearer <API token>` (`edgegw-cloud api-token create`).",
        openapi_url=None,  # served below, behind authentication
        docs_url=None,  # Swagger UI would load from a CDN
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    operators_db = paths.data_dir / "operators.db"

    # ------------------------------------------------------------------ auth
    def who(request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        with Operators(operators_db) as ops:
            if header.lower().startswith("bearer "):
                return ops.token(header[7:].strip())
            sid = request.cookies.get(SESSION_COOKIE)
            return ops.session(sid) if sid else None

    def reader(request: Request) -> Principal:
        p = who(request)
        if p is None:
            raise HTTPException(401, "authentication required", {"WWW-Authenticate": "Bearer"})
        return p

    def writer(p: Annotated[Principal, Depends(reader)]) -> Principal:
        if not p.can_write:
            raise HTTPException(
                403, f"{p.kind} {p.name!r} is read-only: writes need the admin role"
            )
        return p

    Reader = Annotated[Principal, Depends(reader)]
    Writer = Annotated[Principal, Depends(writer)]

    @contextmanager
    def store() -> Iterator[Any]:
        try:
            s = opener()
        except FileNotFoundError:
            yield None  # nothing ingested yet
            return
        try:
            yield s
        finally:
            s.close()

    def registry_rows() -> list[Any]:
        with Registry(paths.registry_db) as reg:
            return reg.gateways()

    # ------------------------------------------------------------------ API
    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(p: Reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/v1/me", tags=["auth"], summary="who am I (name, role)")
    def me(p: Reader) -> dict[str, Any]:
        return {"name": p.name, "role": p.role, "kind": p.kind, "can_write": p.can_write}

    @app.get("/api/v1/gateways", tags=["fleet"], summary="fleet overview")
    def gateways(p: Reader) -> list[dict[str, Any]]:
        """Every gateway: online/offline, last seen, certificate, what it reported (version,
        config version, labels, backlog when it reports them), batches and readings stored,
        gaps (batches/readings it dropped), active alerts."""
        rows = registry_rows()
        with Registry(paths.registry_db) as reg:
            fleet = {f.id: f for f in reg.fleet()}  # what gateways report (device management)
        with store() as s:
            summary = s.fleet_summary() if s is not None else {}
        live = presence.state() if presence is not None else {}
        now = _now_ms()
        out = []
        for g in rows:
            st = summary.get(g.id, {})
            pres = live.get(g.id, {})
            f = fleet.get(g.id)
            last = max(filter(None, (g.last_seen_ms, st.get("last_stored_ms"))), default=None)
            online = f.online if f is not None and f.online is not None else pres.get("online")
            if online is None:
                online = last is not None and now - last < ONLINE_WINDOW_MS
            out.append({
                "id": g.id,
                "online": bool(online) and not g.revoked,
                "revoked": g.revoked,
                "last_seen_ms": last,
                "enrolled_ms": g.enrolled_ms,
                "cert_not_after_ms": g.cert_not_after_ms,
                "version": (f.software_version if f else None) or pres.get("version"),
                "config_version": (f.config_version if f else None) or pres.get(
                    "config_version"),
                "config_pending": f.config_pending if f else None,
                "labels": (f.labels if f else None) or pres.get("labels") or {},
                "devices": len(f.devices) if f and f.devices else st.get("devices", 0),
                "backlog": pres.get("backlog"),
                "batches": st.get("batches", 0),
                "readings": st.get("readings", 0),
                "series": st.get("series", 0),
                "gaps": st.get("gaps", 0),
                "dropped_batches": st.get("dropped_batches", 0),
                "dropped_readings": st.get("dropped_readings", 0),
                "active_alerts": st.get("active_alerts", 0),
            })
        return out

    @app.get("/api/v1/gateways/{gateway}/series", tags=["data"],
             summary="the (device, metric) series a gateway has sent")
    def series(gateway: str, p: Reader) -> list[dict[str, str]]:
        with store() as s:
            return s.series_of(gateway) if s is not None else []

    @app.get("/api/v1/gateways/{gateway}/readings", tags=["data"], summary="stored readings")
    def readings(
        gateway: str,
        p: Reader,
        device: str | None = None,
        metric: str | None = None,
        since: Annotated[str | None, Query(description="ISO-8601, epoch ms, now, -10m")] = None,
        until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> list[dict[str, Any]]:
        since_ms, until_ms = _time(since), _time(until)
        with store() as s:
            if s is None:
                return []
            return [
                {"device": r.device, "metric": r.metric, "ts_ms": r.ts_ms, "value": r.value,
                 "quality": r.quality, "seq": r.seq}
                for r in s.readings(gateway=gateway, device=device, metric=metric,
                                    since_ms=since_ms, until_ms=until_ms, limit=limit)
            ]

    @app.get("/api/v1/gateways/{gateway}/live", tags=["data"],
             summary="server-sent events: new readings as they are stored",
             response_class=StreamingResponse)
    async def live(gateway: str, request: Request, p: Reader,
                   device: str | None = None, after_seq: int | None = None) -> StreamingResponse:
        """``text/event-stream``; each ``readings`` event carries a JSON array of readings
        (device, metric, ts_ms, value, quality, seq) from batches stored since the last one."""

        def fetch(after: int) -> tuple[int, list[dict[str, Any]]]:
            with store() as s:
                if s is None:
                    return after, []
                if after < 0:
                    return s.last_seq(gateway), []
                rows = s.recent_readings(gateway, since_ms=_now_ms() - LIVE_WINDOW_MS,
                                         after_seq=after, device=device)
                return (max((r["seq"] for r in rows), default=after), rows)

        async def events() -> AsyncIterator[bytes]:
            cursor = -1 if after_seq is None else after_seq
            yield b": edgegw live readings\n\n"
            while not await request.is_disconnected():
                cursor, rows = await run_in_threadpool(fetch, cursor)
                if rows:
                    yield f"event: readings\ndata: {json.dumps(rows)}\n\n".encode()
                else:
                    yield b": tick\n\n"  # keeps proxies from timing the stream out
                await asyncio.sleep(LIVE_POLL_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/alerts", tags=["alerts"], summary="alert state per (gateway, rule, device)")
    def alerts(p: Reader, gateway: str | None = None,
               state: Annotated[str, Query(pattern="^(all|active|cleared)$")] = "all"
               ) -> list[dict[str, Any]]:
        with store() as s:
            rows = s.alert_states(gateway) if s is not None else []
        if state != "all":
            rows = [r for r in rows if r["active"] == (state == "active")]
        return rows

    @app.get("/api/v1/alerts/events", tags=["alerts"], summary="alert raise/clear events")
    def alert_events(p: Reader, gateway: str | None = None, since: str | None = None,
                     until: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100_000)] = 1000
                     ) -> list[dict[str, Any]]:
        with store() as s:
            if s is None:
                return []
            return s.alert_events(gateway=gateway, since_ms=_time(since), until_ms=_time(until),
                                  limit=limit)

    @app.get("/api/v1/gaps", tags=["gaps"],
             summary="what gateways dropped (outbox full), which interval and why")
    def gaps(p: Reader, gateway: str | None = None, since: str | None = None,
             until: str | None = None,
             limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
        with store() as s:
            if s is None:
                return []
            return s.gap_records(gateway=gateway, since_ms=_time(since), until_ms=_time(until),
                                 limit=limit)

    def devstore() -> DevStore | None:
        path = paths.data_dir / "devices.db"
        return DevStore(path) if path.exists() else None  # never create it from a read

    @app.get("/api/v1/gateways/{gateway}/shadows", tags=["device management"],
             summary="device shadows of a gateway: desired, reported, delta, versions")
    def shadows(gateway: str, p: Reader) -> list[dict[str, Any]]:
        ds = devstore()
        if ds is None:
            return []
        try:
            return ds.shadows(gateway)
        finally:
            ds.close()

    @app.get("/api/v1/gateways/{gateway}/configs", tags=["device management"],
             summary="configuration history of a gateway, newest first (pushed, refused, "
             "applied, confirmed, reverted, superseded)")
    def configs(gateway: str, p: Reader,
                limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        ds = devstore()
        if ds is None:
            return []
        try:
            return [{k: v for k, v in c.items() if k != "yaml"} | {"bytes": len(c["yaml"])}
                    for c in ds.config_history(gateway, limit)]
        finally:
            ds.close()

    @app.get("/api/v1/commands", tags=["device management"],
             summary="commands sent to gateways' devices and their results, newest first")
    def commands(p: Reader, gateway: str | None = None,
                 status: Annotated[str | None, Query(
                     pattern="^(pending|ok|refused|timed_out|unavailable)$")] = None,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> list[dict[str, Any]]:
        """One row per command: gateway, device, action, args, status (pending, ok, refused,
        timed_out, unavailable), the value or reason of its result, when it was created and
        answered, how often it was sent."""
        ds = devstore()
        if ds is None:  # no command sent yet
            return []
        try:
            return ds.commands(gateway, status, limit)
        finally:
            ds.close()

    @app.post("/api/v1/gateways/{gateway}/revoke", tags=["fleet"],
              summary="revoke a gateway (admin): the broker refuses it from then on")
    def revoke(gateway: str, p: Writer) -> dict[str, Any]:
        try:
            serials = revoke_gateway(paths, gateway)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"gateway": gateway, "revoked_certificates": len(serials)}

    @app.post("/api/v1/enrollment-tokens", tags=["fleet"], response_model=TokenResponse,
              summary="create a one-time enrollment token (admin)")
    def enrollment_token(body: TokenRequest, p: Writer) -> TokenResponse:
        try:
            ttl = parse_ttl(body.ttl)
            with Registry(paths.registry_db) as reg:
                token = reg.create_token(body.gateway_id, ttl, reinstate=body.reinstate)
        except (RegistryError, ValueError, ArgumentTypeError) as exc:
            raise HTTPException(422, str(exc)) from None
        return TokenResponse(gateway_id=body.gateway_id, token=token, expires_in_s=ttl)

    # ------------------------------------------------------------------ pages
    def page(name: str, request: Request) -> Response:
        if who(request) is None:
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    def fleet_page(request: Request) -> Response:
        return page("fleet.html", request)

    @app.get("/gateways/{gateway}", include_in_schema=False)
    def gateway_page(gateway: str, request: Request) -> Response:
        return page("gateway.html", request)

    @app.get("/alerts", include_in_schema=False)
    def alerts_page(request: Request) -> Response:
        return page("alerts.html", request)

    @app.get("/gaps", include_in_schema=False)
    def gaps_page(request: Request) -> Response:
        return page("gaps.html", request)

    @app.get("/commands", include_in_schema=False)
    def commands_page(request: Request) -> Response:
        return page("commands.html", request)

    @app.get("/login", include_in_schema=False)
    def login_page() -> Response:
        return FileResponse(STATIC / "login.html")

    @app.post("/login", tags=["auth"], summary="log in (dashboard session cookie)")
    def login(body: LoginRequest) -> Response:
        """Sets the session cookie on success (204); 401 for a wrong user name or password."""
        with Operators(operators_db) as ops:
            sid = ops.login(body.username, body.password)
        if sid is None:
            return JSONResponse({"detail": "wrong user name or password"}, status_code=401)
        resp = Response(status_code=204)
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, secure=True, samesite="strict",
                        max_age=12 * 3600)
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            with Operators(operators_db) as ops:
                ops.logout(sid)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    return app
