"""The Python test harness of llmserve, shared by every pytest test and benchmark of the repo.

Imported as a normal package: the root `pyproject.toml` puts `tests/` on pytest's path, and the
benchmarks run with `PYTHONPATH=tests` (see docs/benchmarks.md).

- `paths`: the repository's files (the test model, the chart, the CRD) and the built binaries;
- `net`: free ports, plain HTTP and waiting until something holds;
- `procs`: server, router and operator processes on free ports, reaped on exit;
- `prometheus`: Prometheus's HTTP API, and a local Prometheus scraping given targets;
- `kube`: kubectl, the test control plane (etcd + kube-apiserver) and the assembled cluster;
- `fixtures`: the pytest fixtures (a plugin the root conftest.py loads);
- `stats`: percentiles for the benchmarks' tables.
"""
