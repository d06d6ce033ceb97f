"""deploy/k8s/monitoring: ServiceMonitor, alert rules and Grafana dashboard, checked offline.

- the servers' /metrics passes ``promtool check metrics``;
- the rules pass ``promtool check rules`` and the alert unit tests (``promtool test
  rules`` on alerts_test.yaml): each alert fires on its situation and not on a healthy one;
- every metric name (and label) the rules and the dashboard use is one a real server
  exposes on /metrics, and every exposed recstack metric has a place on the dashboard;
- the ServiceMonitor selects the Services of all three roles, through their metrics port.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rank_service.server import serve as serve_rank
from recstack.core.config import RankOptions, ServerOptions
from recstack.tools.procs import free_port
from recstack.v1 import rank_pb2, rank_pb2_grpc
from tests.conftest import channel_to
from tests.deploy import k8s
from tests.deploy.k8s import Obj

MONITORING = k8s.K8S / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Labels Prometheus (Operator) attaches to every scraped series: target labels and the
# ServiceMonitor's relabelling (component).
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "endpoint", "container"}
TARGET_LABELS |= {"component"}
METRIC = re.compile(r"\b(recstack_[a-z0-9_]+|recstack:[a-z0-9_:]+)\b(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_IN_SELECTOR = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    return k8s.render("monitoring")


def rule_groups(rendered: list[Obj]) -> dict[str, Any]:
    (rule,) = k8s.by_kind(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    spec: dict[str, Any] = rule["spec"]
    return spec


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: apt-get install prometheus (scripts/test.sh does)"
    return path


def rule_exprs(rendered: list[Obj]) -> list[str]:
    return [r["expr"] for g in rule_groups(rendered)["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return exprs


def test_kinds_and_the_dashboard_configmap(rendered: list[Obj]) -> None:
    assert sorted(o["kind"] for o in rendered) == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    (cm,) = k8s.by_kind(rendered, "ConfigMap")
    kubernetes_validate.validate(cm, k8s.KUBERNETES_VERSION, strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["recstack-dashboard.json"]) == json.loads(DASHBOARD.read_text())


def test_rules_pass_promtool_check_and_alert_unit_tests(
    rendered: list[Obj], tmp_path: Path
) -> None:
    rules = tmp_path / "recstack-rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups(rendered)))
    shutil.copy(MONITORING / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    for args in (["check", "rules", str(rules)], ["test", "rules", "alerts_test.yaml"]):
        done = subprocess.run(
            [promtool(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_alerts_cover_the_operational_failures(rendered: list[Obj]) -> None:
    alerts = {
        r["alert"]: r["expr"] for g in rule_groups(rendered)["groups"] for r in g["rules"]
        if "alert" in r
    }  # fmt: skip
    needs = {
        "RecstackHighErrorRate": "recstack:rpc_error_ratio",
        "RecstackLatencySLOFastBurn": "recstack:recommend_slow_ratio",
        "RecstackLatencySLOSlowBurn": "recstack:recommend_slow_ratio",
        "RecstackRankQueueDeep": "recstack_rank_queue_depth",
        "RecstackRecallReplayLag": "recstack_catalog_replay_lag",
        "RecstackNotServing": "recstack_serving",
    }
    for alert, metric in needs.items():
        assert metric in alerts.get(alert, ""), f"{alert} missing or not on {metric}"
    tested = (MONITORING / "alerts_test.yaml").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tested, f"{alert} has no promtool unit test"


@pytest.fixture(scope="module")
def scraped(bundle_dir: Path) -> str:
    """A real rank server's /metrics (text format) after a good and a refused RPC.

    All recstack metrics are declared in recstack/core/metrics.py and exposed (at least their
    HELP/TYPE) by any server; the RPCs make the per-method series appear.
    """
    running = serve_rank(
        ServerOptions(port=0, metrics_port=free_port()), RankOptions(bundle=str(bundle_dir))
    )
    try:
        running.wait_ready(120)
        stub = rank_pb2_grpc.RankServiceStub(channel_to(running))
        stub.GetInfo(rank_pb2.RankServiceGetInfoRequest(), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Rank(rank_pb2.RankRequest(), timeout=30)
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def exposed(scraped: str) -> dict[str, set[str]]:
    """Sample name -> label names of every recstack metric on /metrics."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scraped):
        # (the text format exposes each counter's and histogram's creation time as a
        # separate *_created gauge; it is not a metric of ours)
        if not family.name.startswith("recstack_") or family.name.endswith("_created"):
            continue
        labels = {k for s in family.samples for k in s.labels}
        labels |= set(_declared_labels(family.name))
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        for suffix in suffixes.get(family.type, [""]):
            out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def test_exposition_passes_promtool_check_metrics(scraped: str) -> None:
    """Prometheus's own lint of the exposition (names, units, HELP, counter suffixes)."""
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=scraped, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def _declared_labels(name: str) -> tuple[str, ...]:
    """Label names of a metric that may have no series yet (e.g. a counter never hit)."""
    from recstack.core import metrics

    for value in vars(metrics).values():
        if getattr(value, "_name", None) == name:
            return tuple(value._labelnames)
    raise AssertionError(f"{name} exposed but not declared in recstack/core/metrics.py")


def _check_expr(expr: str, exposed: dict[str, set[str]], records: set[str]) -> list[str]:
    problems = []
    used_labels: set[str] = set()
    for name, selector in METRIC.findall(expr):
        if name.startswith("recstack:"):
            if name not in records:
                problems.append(f"{name}: no recording rule defines it")
            continue
        if name not in exposed:
            problems.append(f"{name}: not exposed by the servers")
            continue
        used_labels |= exposed[name]
        for label in LABEL_IN_SELECTOR.findall(selector):
            if label not in exposed[name] | TARGET_LABELS:
                problems.append(f"{name}{{{label}}}: no such label")
    for group in GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in used_labels | TARGET_LABELS and "recstack:" not in expr:
                problems.append(f"by ({label}): no metric in the expression has it")
    return [f"{p}  in  {expr.strip()[:120]}" for p in problems]


def test_every_metric_and_label_used_is_exposed(
    rendered: list[Obj], exposed: dict[str, set[str]]
) -> None:
    records = {r["record"] for g in rule_groups(rendered)["groups"] for r in g["rules"]
               if "record" in r}  # fmt: skip
    problems = [
        p
        for e in rule_exprs(rendered) + dashboard_exprs()
        for p in _check_expr(e, exposed, records)
    ]
    assert not problems, "\n".join(problems)


def test_the_name_check_can_fail(exposed: dict[str, set[str]]) -> None:
    assert _check_expr("rate(recstack_rpc_requests[5m])", exposed, set())  # _total missing
    assert _check_expr('recstack_rank_queue_depth{method="x"}', exposed, set())
    assert _check_expr("sum by (stage) (recstack_rank_queue_depth)", exposed, set())
    assert _check_expr("recstack:nothing:rate5m", exposed, set())
    assert not _check_expr('sum by (method) (rate(recstack_rpc_requests_total{code="OK"}[1m]))',
                           exposed, set())  # fmt: skip


def test_every_exposed_metric_is_on_the_dashboard(exposed: dict[str, set[str]]) -> None:
    used = {name for e in dashboard_exprs() for name, _ in METRIC.findall(e)}
    families = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in exposed}
    on_dashboard = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    assert families - on_dashboard == set(), "metrics without a dashboard panel"


def test_dashboard_panels_are_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])


def test_servicemonitor_scrapes_all_three_roles(rendered: list[Obj]) -> None:
    (monitor,) = k8s.by_kind(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    for overlay in ("cpu", "sharded"):
        services = [
            s for s in k8s.by_kind(k8s.render(f"overlays/{overlay}"), "Service")
            if k8s.label_selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]  # fmt: skip
        roles = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services}
        assert roles == {"gateway", "recall", "rank"}, overlay
        for service in services:
            ports = {p["name"]: p for p in service["spec"]["ports"]}
            assert endpoint["port"] in ports, k8s.name_of(service)
            assert ports[endpoint["port"]]["port"] == 9090, k8s.name_of(service)
