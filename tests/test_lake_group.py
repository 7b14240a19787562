"""A shop group on a partitioned lake, orchestrated as prefect.yaml says (docs/rules.md §10): a real Prefect server,
`prefect deploy --all`, two process workers in crm-process and one in crm-parent. The group-ingest and group-dispatch
deployments fan out one run per partition, the partitions' runs go side by side, and every message reaches the
gateway or the SMTP server once."""

from __future__ import annotations

import uuid

import httpx

from crm.config import load_settings
from crm.db import session
from deploying import api_url, call, deploy_env, deployed, deployments, wait_until_final, worker
from postgres import postgres  # noqa: F401  (the session's fixture)
from test_lake_dispatch import AT, demo, servers  # noqa: F401  (a fixture)
from test_lake_pipeline import _lake_shops, lake_of


def test_the_group_flows_fan_out_over_the_partitions_on_workers(postgres, tmp_path, servers, local_server):  # noqa: F811
    gateway, box, smtp_port = servers
    demo(tmp_path, gateway.url, smtp_port, orders=1500)
    storage = lake_of(postgres, tmp_path / "lake").model_copy(update={"partitions": 4})
    config = _lake_shops(tmp_path, storage)
    config.write_text(config.read_text(encoding="utf-8") + "partitions = 4\n", encoding="utf-8")
    # one landing folder per partition: the demo's shops are in partitions 2 (s1) and 3 (s2, s3); 0 and 1 are empty
    root = tmp_path / "landings"
    for k in range(4):
        (root / f"p{k}").mkdir(parents=True) if k < 2 else (root / f"p{k}").symlink_to(tmp_path / "landing")
    env = deploy_env(api_url(local_server), tmp_path / "unused.duckdb", config)
    quick = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    with deployed(env), worker(env, tmp_path, **quick), worker(env, tmp_path, **quick), \
            worker(env, tmp_path, "crm-parent", **quick), httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30) as client:
        found = deployments(client)
        states = {}
        for name, parameters in (("group-ingest", {"landing_root": str(root)}),
                                 ("group-dispatch", {"as_of": AT.isoformat()})):
            run = call(client, "POST", f"/deployments/{found[name]['id']}/create_flow_run",
                       json={"parameters": parameters, "idempotency_key": f"{name}-{uuid.uuid4()}"}).json()
            states[name] = wait_until_final(client, run["id"], timeout=420)
            assert states[name] == "COMPLETED", (name, states, _logs(client))
            # one run per partition, each made with its group run's idempotency key (a create request Prefect's
            # client sends again after a read timeout returns the same run: flows/group.py child_key)
            step = name.removeprefix("group-")
            children = call(client, "POST", "/flow_runs/filter", json={"flow_runs": {"name": {"like_": f"{step}-p"}}}).json()
            assert sorted(c["name"] for c in children) == [f"{step}-p{k}" for k in range(4)], children
            assert {c["idempotency_key"] for c in children} == {f"{run['id']}:1:{step}:p{k}" for k in range(4)}
        limits = {c["name"]: c["limit"] for c in call(client, "POST", "/v2/concurrency_limits/filter", json={}).json()}
    assert {f"crm-partition-{k}": 1 for k in range(4)}.items() <= limits.items()
    keys = [key for _, key, status in gateway.requests if status == 200]
    assert len(keys) == len(set(keys)) > 10 and gateway.repeats == 0
    assert len(box.messages) > 10
    lake = load_settings(config)
    with session(tmp_path / "unused.duckdb", lake, lake=True, partition=2) as con:
        made = {r[0] for r in con.execute("SELECT DISTINCT shop_id FROM ops.messages").fetchall()}
        planned = {r[0] for r in con.execute("SELECT DISTINCT shop_id FROM marts.reminder_decisions WHERE as_of = ?",
                                             [AT]).fetchall()}
        sent = {r[0] for r in con.execute("SELECT message_id FROM ops.messages WHERE status = 'sent' "
                                          "AND channel <> 'email'").fetchall()}
        staged = {2: {r[0] for r in con.execute("SELECT DISTINCT shop_id FROM staging.orders").fetchall()}}
    with session(tmp_path / "unused.duckdb", lake, lake=True, partition=3) as con:
        staged[3] = {r[0] for r in con.execute("SELECT DISTINCT shop_id FROM staging.orders").fetchall()}
        planned |= {r[0] for r in con.execute("SELECT DISTINCT shop_id FROM marts.reminder_decisions WHERE as_of = ?",
                                              [AT]).fetchall()}
    assert staged == {2: {"s1"}, 3: {"s2", "s3"}}             # each partition loaded its own shops
    assert planned == {"s1", "s2", "s3"}                       # both partitions' dispatches planned at T
    assert made >= {"s2", "s3"} and sent == set(keys)           # one outbox for the group


def _logs(client: httpx.Client) -> list[str]:
    """The server's last log lines of failed runs (what a failing assertion shows)."""
    runs = call(client, "POST", "/flow_runs/filter",
                json={"flow_runs": {"state": {"type": {"any_": ["FAILED", "CRASHED"]}}}, "limit": 10}).json()
    logs = call(client, "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [r["id"] for r in runs]}},
                                                      "limit": 60, "sort": "TIMESTAMP_DESC"}).json()
    out = [f"{r['name']}: " for r in runs] + [line["message"][-600:] for line in logs]
    return out
