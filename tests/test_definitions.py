"""Definitions load: every flow module imports, and every deployment in prefect.yaml names a real
flow with parameters it accepts, a work pool the README's set-up creates, and valid schedules. (Whether a
server schedules and runs them is test_schedules.py's question.)"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("module", sorted(p.stem for p in (REPO / "flows").glob("*.py") if p.stem != "__init__"))
def test_every_flow_module_imports(module):
    importlib.import_module(f"flows.{module}")


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_every_deployment_loads(deployment):
    from prefect import Flow

    path, _, name = deployment["entrypoint"].partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert isinstance(flow, Flow)
    accepted = inspect.signature(flow.fn).parameters
    assert set(deployment.get("parameters", {})) <= set(accepted), "every parameter is one the flow takes"
    required = {n for n, p in accepted.items() if p.default is inspect.Parameter.empty}
    assert required <= set(deployment.get("parameters", {})), "every required parameter has a default here"
    # a parent in its children's pool deadlocks under a pool limit: the group flows have a pool of their own
    parent = deployment["entrypoint"] == "flows/group.py:group_flow"
    assert deployment["work_pool"]["name"] == ("crm-parent" if parent else "crm-process")
    for schedule in deployment.get("schedules", []):
        ZoneInfo(schedule["timezone"])
        assert len(schedule["cron"].split()) == 5


def test_dispatch_never_runs_twice_at_once():
    [dispatch] = [d for d in DEPLOYMENTS if d["name"] == "dispatch"]
    assert dispatch["concurrency_limit"] == 1


def test_every_group_step_has_a_partition_deployment_of_its_flow():
    """flows/group.py starts `<flow name>/<deployment>` per partition: each exists here, takes `partition`, has no
    schedule of its own (the group starts it) and no deployment-wide limit (partitions run side by side)."""
    from flows.group import STEPS

    by_name = {d["name"]: d for d in DEPLOYMENTS}
    groups = {d["parameters"]["step"] for d in DEPLOYMENTS if d["entrypoint"] == "flows/group.py:group_flow"}
    assert groups == {"ingest", "dispatch", "maintenance"}
    for step, target in STEPS.items():
        flow_name, _, deployment_name = target.partition("/")
        d = by_name[deployment_name]
        path, _, fn = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), fn)
        assert flow.name == flow_name and "partition" in inspect.signature(flow.fn).parameters, step
        assert "schedules" not in d and "concurrency_limit" not in d, step


def test_readme_deploy_steps_create_every_work_pool_deployed_to():
    """`prefect deploy --all` stops on a deployment whose work pool does not exist, so the README's scheduled set-up
    must create every pool prefect.yaml deploys to (crm-parent too, even where no worker ever starts in it)."""
    pools = {d["work_pool"]["name"] for d in DEPLOYMENTS}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    created = set(re.findall(r"^prefect work-pool create (\S+) --type process", readme, re.M))
    assert pools and pools <= created, f"pools deployed to but not created in the README: {sorted(pools - created)}"
