"""docs/grafana/inferd.json and docs/prometheus/alerts.yml: valid, and every metric they use exists."""

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import CollectorRegistry

from inferd.service.metrics import Metrics
from tests.conftest import ROOT
from tests.test_telemetry import fake_sysfs

DASHBOARD = ROOT / "docs" / "grafana" / "inferd.json"
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\b((?:inferd|process)_[a-z_]+)\b")


def exported_names(tmp_path) -> set[str]:
    """Every series name inferd can export, from the registry's metric families."""
    reg = CollectorRegistry()
    Metrics(reg, sysfs=fake_sysfs(tmp_path))
    names = set()
    for fam in reg.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        for suffix in suffixes.get(fam.type, [""]):
            names.add(fam.name + suffix)
    return names


def expressions_of_dashboard() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])] + [
        v.get("query", "") for v in dash["templating"]["list"] if isinstance(v.get("query"), str)
    ]


def test_dashboard_is_valid_and_uses_only_exported_metrics(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] == "inferd" and dash["panels"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    used = {m for e in expressions_of_dashboard() for m in METRIC.findall(e)}
    exported = exported_names(tmp_path)
    assert used and used <= exported, used - exported
    for needed in ("inferd_frame_latency_seconds_bucket", "inferd_frames_dropped_total",
                   "inferd_device_temperature_celsius", "inferd_ready"):  # fmt: skip
        assert needed in used


def test_alert_rules_are_valid_and_use_only_exported_metrics(tmp_path):
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"InferdNotReady", "InferdFrameDropRateHigh", "InferdLatencyP99High", "InferdDeviceHot"} <= set(
        alerts
    )
    exported = exported_names(tmp_path)
    for name, rule in alerts.items():
        assert rule["expr"] and rule["annotations"]["summary"], name
        used = set(METRIC.findall(rule["expr"]))
        assert used <= exported, (name, used - exported)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (make check-alerts installs it)"
)
def test_promtool_accepts_the_rules():
    proc = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
