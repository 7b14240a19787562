"""Definitions load: every flow module imports, and every deployment in prefect.yaml names a real
flow with parameters it accepts, a work pool and valid schedules. (Whether a server schedules and runs
them is test_schedules.py's question.)"""

from __future__ import annotations

import importlib
import inspect
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
    assert deployment["work_pool"]["name"] == "crm-process"
    for schedule in deployment.get("schedules", []):
        ZoneInfo(schedule["timezone"])
        assert len(schedule["cron"].split()) == 5


def test_dispatch_never_runs_twice_at_once():
    [dispatch] = [d for d in DEPLOYMENTS if d["name"] == "dispatch"]
    assert dispatch["concurrency_limit"] == 1
