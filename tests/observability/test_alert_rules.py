"""The static alert rules: valid for Prometheus, and each fires when it should and stays quiet
when it should (promtool's rule unit tests, input series for every alert)."""

import re
import subprocess

from llmserve_testing.paths import ROOT, RULE_TESTS, RULES


def promtool(*args):
    r = subprocess.run(["promtool", *args], cwd=RULE_TESTS.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_static_rules_check_and_unit_tests():
    # The rules live once, in the chart; the unit tests name them by a path relative to themselves.
    assert "SUCCESS: 4 rules found" in promtool("check", "rules", str(RULES))
    promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_has_a_test_and_a_runbook():
    rules = RULES.read_text()
    tests = RULE_TESTS.read_text()
    readme = (ROOT / "README.md").read_text().lower()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert len(alerts) == 4
    for a in alerts:
        assert f"alertname: {a}" in tests, f"{a} has no promtool test"
        assert f"#### {a.lower()}" in readme, f"{a} has no runbook in the README"
