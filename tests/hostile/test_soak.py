"""The short hostile-traffic soak of the test command: 5,000 requests of every wrong kind through the
router into two replicas (debug builds), then the health checks of `bench.soak`. The long run
(100,000 requests, release builds) is the benchmark in docs/benchmarks.md."""

import json

from bench.soak import soak


def test_hostile_traffic_crashes_wedges_and_misleads_nothing():
    report, problems = soak(requests=5000, seconds=420, concurrency=16, seed=7, profile="debug")
    print(json.dumps(report, indent=2))
    assert report["requests"] >= 5000, f"only {report['requests']} requests in the time allowed"
    assert not problems, "\n".join(problems[:30])
