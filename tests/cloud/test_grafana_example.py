"""The shipped Grafana example: every SQL query of the dashboard runs on a PostgreSQL store
holding real batches (Grafana's macros expanded the way its PostgreSQL source does)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psycopg
import yaml

from edgegw.model import Alert, Sample
from edgegw.protocol.codec import Gap
from edgegw_cloud.store import BatchRecord
from edgegw_cloud.store_pg import PgStore

from .helpers import pg_database

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "grafana"


def _expand(sql: str, t_from: int, t_to: int) -> str:
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 rf"\1 BETWEEN to_timestamp({t_from}) AND to_timestamp({t_to})", sql)
    sql = sql.replace("$__unixEpochFrom()", str(t_from)).replace("$__unixEpochTo()", str(t_to))
    return sql.replace("$gateway", "gw-a").replace("($device)", "('boiler1')")


def test_dashboard_queries_run_on_the_store() -> None:
    dash = json.loads((EXAMPLE / "dashboards" / "edgegw-fleet.json").read_text())
    ds = yaml.safe_load((EXAMPLE / "provisioning" / "datasources" / "edgegw.yaml").read_text())
    assert ds["datasources"][0]["uid"] == dash["panels"][0]["datasource"]["uid"]
    now = int(time.time())
    now_ms = now * 1000
    with pg_database() as url:
        store = PgStore(url)
        try:
            store.commit_many([
                BatchRecord("gw-a", 1, 1, now_ms, samples=[
                    Sample("boiler1", "temperature", now_ms - 1000 * i, 50.0 + i)
                    for i in range(10)]),
                BatchRecord("gw-a", 2, 0, now_ms,
                            alerts=[Alert("hot", "boiler1", now_ms, True, message="hot")],
                            gaps=[Gap(1, (5, 6), now_ms - 60_000, now_ms - 50_000, 2, 200,
                                      "outbox_full")]),
            ])
        finally:
            store.close()
        with psycopg.connect(url) as db:
            queries = [t["rawSql"] for p in dash["panels"] for t in p["targets"]]
            queries += [v["query"] for v in dash["templating"]["list"]]
            results = [db.execute(_expand(q, now - 3600, now + 60)).fetchall() for q in queries]
    readings, rate, alerts, gaps, gateways, devices = results
    assert len(readings) == 10 and {r[1] for r in readings} == {"temperature"}
    assert rate[0][1] > 0
    assert alerts[0][:3] == ("gw-a", "hot", "boiler1")
    assert gaps[0][3:] == (2, 200, "outbox_full")
    assert gateways == [("gw-a",)] and devices == [("boiler1",)]
