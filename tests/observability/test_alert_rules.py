"""The static alert rules: valid for Prometheus, and each fires when it should and stays quiet
when it should (promtool's rule unit tests, input series for every alert)."""

import re
import subprocess

import harness

RULES = harness.ROOT / "dashboards/rules"


def promtool(*args):
    r = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_static_rules_check_and_unit_tests():
    assert "SUCCESS: 4 rules found" in promtool("check", "rules", "llmserve.rules.yaml")
    promtool("test", "rules", "llmserve.rules.test.yaml")


def test_every_alert_has_a_test_and_a_runbook():
    rules = (RULES / "llmserve.rules.yaml").read_text()
    tests = (RULES / "llmserve.rules.test.yaml").read_text()
    readme = (harness.ROOT / "README.md").read_text().lower()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert len(alerts) == 4
    for a in alerts:
        assert f"alertname: {a}" in tests, f"{a} has no promtool test"
        assert f"#### {a.lower()}" in readme, f"{a} has no runbook in the README"
