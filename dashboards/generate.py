#!/usr/bin/env python3
"""Writes llmserve's Grafana dashboards (classic JSON model) and the ConfigMaps that ship them.

The panels are declared here once, as data. Each generated file exists once:
`charts/llmserve/dashboards/*.json`, the dashboards (the chart ships them as they are), and
`dashboards/configmaps.yaml`, the same dashboards as ConfigMaps for installs without the chart.
`--check` fails when a checked-in file differs from what this script writes (the test suite runs
it). The static alert rules are hand-written, once, in `charts/llmserve/rules/llmserve.rules.yaml`.

    python3 dashboards/generate.py          # write
    python3 dashboards/generate.py --check  # verify
"""

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 42  # @grafana/schema 13.2's current dashboard schema version
DS = {"type": "prometheus", "uid": "${datasource}"}

# Label filters. Engine families carry `model_name` (vLLM's label); the service-level families of
# the server and the router carry `model`. `namespace` and `pod` are the target labels the
# Prometheus Operator adds; `llmserve_app` is the application, copied from the Service's
# `app.kubernetes.io/instance` label by the ServiceMonitors the operator writes.
E = 'namespace=~"$namespace", llmserve_app=~"$application", model_name=~"$model", pod=~"$replica"'
H = 'namespace=~"$namespace", llmserve_app=~"$application", model=~"$model", pod=~"$replica"'
R = 'namespace=~"$namespace", llmserve_app=~"$application", model=~"$model"'
OP = 'namespace=~"$namespace"'
R2XX = R + ', status_class="2xx"'
# Per-process families without a `model` label (connections).
APP = 'namespace=~"$namespace", llmserve_app=~"$application"'
APP_POD = APP + ', pod=~"$replica"'
WINDOW = "$interval"


def rate(metric, sel, by, window=WINDOW):
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{window}]))"


def mean(hist, sel, by="model_name"):
    # `>= 0` drops the NaN of 0/0 on idle replicas instead of drawing it.
    return f"({rate(hist + '_sum', sel, by)} / {rate(hist + '_count', sel, by)}) >= 0"


def quantile(q, hist, sel, by="model_name"):
    return f"histogram_quantile({q}, {rate(hist + '_bucket', sel, 'le, ' + by)}) >= 0"


def latency_targets(hist, sel=E, by="model_name", qs=(0.5, 0.9, 0.99), with_mean=True):
    label = "{{" + by.split(",")[-1].strip() + "}}"
    out = []
    if with_mean:
        out.append((mean(hist, sel, by), f"{label} mean"))
    for q in qs:
        out.append((quantile(q, hist, sel, by), f"{label} p{round(q * 100)}"))
    return out


def increase(metric, sel, window, by=None):
    inner = f"increase({metric}{{{sel}}}[{window}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


# === the serving dashboard ===
# (row title, [(panel title, type, unit, description, [(expr, legend)])])
SERVING = [
    (
        "Throughput",
        [
            (
                "Requests/s per model and replica",
                "timeseries",
                "reqps",
                "Finished requests per second, by model and replica (engine).",
                [(rate("vllm:request_success_total", E, "model_name, pod"), "{{model_name}} {{pod}}")],
            ),
            (
                "Prompt tokens/s",
                "timeseries",
                "short",
                "Prompt tokens processed per second, by model.",
                [(rate("vllm:prompt_tokens_total", E, "model_name"), "{{model_name}}")],
            ),
            (
                "Generation tokens/s",
                "timeseries",
                "short",
                "Tokens generated per second, by model.",
                [(rate("vllm:generation_tokens_total", E, "model_name"), "{{model_name}}")],
            ),
            (
                "Totals",
                "stat",
                "short",
                "All selected models: requests/s and tokens/s (prompt + generated).",
                [
                    (f"sum(rate(vllm:request_success_total{{{E}}}[{WINDOW}]))", "requests/s"),
                    (
                        f"sum(rate(vllm:prompt_tokens_total{{{E}}}[{WINDOW}]))"
                        f" + sum(rate(vllm:generation_tokens_total{{{E}}}[{WINDOW}]))",
                        "tokens/s",
                    ),
                ],
            ),
        ],
    ),
    (
        "Latency",
        [
            (
                "Time to first token",
                "timeseries",
                "s",
                "TTFT in the engine: mean, p50, p90, p99.",
                latency_targets("vllm:time_to_first_token_seconds"),
            ),
            (
                "Time per output token",
                "timeseries",
                "s",
                "TPOT in the engine: mean, p50, p90, p99.",
                latency_targets("vllm:request_time_per_output_token_seconds"),
            ),
            (
                "End-to-end request latency",
                "timeseries",
                "s",
                "From arrival to the last token: mean, p50, p90, p99.",
                latency_targets("vllm:e2e_request_latency_seconds"),
            ),
            (
                "Inter-token latency",
                "timeseries",
                "s",
                "Time between consecutive output tokens: mean, p50, p99.",
                latency_targets("vllm:inter_token_latency_seconds", qs=(0.5, 0.99)),
            ),
        ],
    ),
    (
        "Cache",
        [
            (
                "KV-cache usage per replica",
                "timeseries",
                "percentunit",
                "Fraction of KV-cache blocks in use.",
                [(f"max by (model_name, pod) (vllm:kv_cache_usage_perc{{{E}}})", "{{model_name}} {{pod}}")],
            ),
            (
                "Prefix-cache hit rate",
                "timeseries",
                "percentunit",
                "Prompt tokens found in the prefix cache / prompt tokens looked up (needs --enable-prefix-caching).",
                [
                    (
                        f"({rate('vllm:prefix_cache_hits_total', E, 'model_name')}"
                        f" / {rate('vllm:prefix_cache_queries_total', E, 'model_name')}) >= 0",
                        "{{model_name}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Request length",
        [
            (
                "Prompt length",
                "timeseries",
                "short",
                "Prompt tokens per request: mean, p50, p90.",
                latency_targets("vllm:request_prompt_tokens", qs=(0.5, 0.9)),
            ),
            (
                "Generation length",
                "timeseries",
                "short",
                "Generated tokens per request: mean, p50, p90.",
                latency_targets("vllm:request_generation_tokens", qs=(0.5, 0.9)),
            ),
        ],
    ),
    (
        "Scheduler",
        [
            (
                "Running and waiting requests",
                "timeseries",
                "short",
                "Requests in the batch and in the queue, per replica; their sum is what the HPA scales on.",
                [
                    (f"sum by (model_name, pod) (vllm:num_requests_running{{{E}}})", "running {{model_name}} {{pod}}"),
                    (f"sum by (model_name, pod) (vllm:num_requests_waiting{{{E}}})", "waiting {{model_name}} {{pod}}"),
                ],
            ),
            (
                "Batch size",
                "timeseries",
                "short",
                "Sequences in the engine's current step.",
                [(f"max by (model_name, pod) (llmserve:batch_size{{{E}}})", "{{model_name}} {{pod}}")],
            ),
            (
                "Finish reasons",
                "timeseries",
                "reqps",
                "Finished requests/s by reason (stop, length, abort).",
                [
                    (
                        rate("vllm:request_success_total", E, "model_name, finished_reason"),
                        "{{model_name}} {{finished_reason}}",
                    )
                ],
            ),
            (
                "Preemptions",
                "timeseries",
                "short",
                "Sequences preempted per second (KV cache exhausted; recomputed later).",
                [(rate("vllm:num_preemptions_total", E, "model_name"), "{{model_name}}")],
            ),
            (
                "Queue, prefill and decode time",
                "timeseries",
                "s",
                "Mean time a request spends waiting, in prefill and in decode.",
                [
                    (mean("vllm:request_queue_time_seconds", E), "queue {{model_name}}"),
                    (mean("vllm:request_prefill_time_seconds", E), "prefill {{model_name}}"),
                    (mean("vllm:request_decode_time_seconds", E), "decode {{model_name}}"),
                ],
            ),
            (
                "Tokens per engine step",
                "timeseries",
                "short",
                "Tokens scheduled in one step (prefill + decode): p50, p99.",
                [
                    (quantile(0.5, "vllm:iteration_tokens_total", E), "{{model_name}} p50"),
                    (quantile(0.99, "vllm:iteration_tokens_total", E), "{{model_name}} p99"),
                ],
            ),
        ],
    ),
    (
        "Token distribution",
        [
            (
                "Tokens, last 24 h",
                "stat",
                "short",
                "Prompt + generated tokens over the last day.",
                [
                    (
                        f"{increase('vllm:prompt_tokens_total', E, '24h')}"
                        f" + {increase('vllm:generation_tokens_total', E, '24h')}",
                        "tokens",
                    )
                ],
            ),
            (
                "Tokens, last hour",
                "stat",
                "short",
                "Prompt + generated tokens over the last hour.",
                [
                    (
                        f"{increase('vllm:prompt_tokens_total', E, '1h')}"
                        f" + {increase('vllm:generation_tokens_total', E, '1h')}",
                        "tokens",
                    )
                ],
            ),
            (
                "Input : generated, 24 h",
                "stat",
                "short",
                "Prompt tokens per generated token over the last day.",
                [
                    (
                        f"({increase('vllm:prompt_tokens_total', E, '24h')}"
                        f" / {increase('vllm:generation_tokens_total', E, '24h')}) >= 0",
                        "ratio",
                    )
                ],
            ),
            (
                "Requests per model, 24 h",
                "piechart",
                "short",
                "Share of finished requests by model over the last day.",
                [(increase("vllm:request_success_total", E, "24h", "model_name"), "{{model_name}}")],
            ),
            (
                "Peak generation tokens/s, 24 h",
                "stat",
                "short",
                "Highest 2-minute generation rate per model over the last day.",
                [
                    (
                        "max_over_time((sum by (model_name) "
                        f"(rate(vllm:generation_tokens_total{{{E}}}[2m])))[24h:15s])",
                        "{{model_name}}",
                    )
                ],
            ),
            (
                "Tokens per request, 7 days",
                "stat",
                "short",
                "Average prompt + generated tokens per finished request, per model.",
                [
                    (
                        f"(({increase('vllm:prompt_tokens_total', E, '7d', 'model_name')}"
                        f" + {increase('vllm:generation_tokens_total', E, '7d', 'model_name')})"
                        f" / {increase('vllm:request_success_total', E, '7d', 'model_name')}) >= 0",
                        "{{model_name}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Errors",
        [
            (
                "Errors/s by status class and route",
                "timeseries",
                "reqps",
                "4xx and 5xx answers of the model servers (service level: also with engine metrics off).",
                [
                    (
                        "sum by (model, route, status_class) "
                        f'(rate(llmserve_http_requests_total{{{H}, status_class=~"4xx|5xx"}}[{WINDOW}]))',
                        "{{model}} {{route}} {{status_class}}",
                    )
                ],
            ),
            (
                "Error ratio",
                "timeseries",
                "percentunit",
                "Share of answers that are 4xx or 5xx, per model.",
                [
                    (
                        "(sum by (model) "
                        f'(rate(llmserve_http_requests_total{{{H}, status_class=~"4xx|5xx"}}[{WINDOW}]))'
                        f" / sum by (model) (rate(llmserve_http_requests_total{{{H}}}[{WINDOW}]))) >= 0",
                        "{{model}}",
                    )
                ],
            ),
            (
                "Rejected for backpressure",
                "timeseries",
                "reqps",
                "Requests refused because the waiting queue was full (429), per model and replica.",
                [
                    (
                        rate("llmserve_http_requests_rejected_total", H, "model, pod, reason"),
                        "{{model}} {{pod}} {{reason}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Router (service level)",
        [
            (
                "Requests/s at the router",
                "timeseries",
                "reqps",
                "Requests by model and status class, measured at the application's router.",
                [(rate("llmserve_router_requests_total", R, "model, status_class"), "{{model}} {{status_class}}")],
            ),
            (
                "Router latency",
                "timeseries",
                "s",
                "Request duration until the last byte, and time to first byte (first SSE event): p50, p99.",
                [
                    (quantile(0.5, "llmserve_router_request_duration_seconds", R, "model"), "duration {{model}} p50"),
                    (quantile(0.99, "llmserve_router_request_duration_seconds", R, "model"), "duration {{model}} p99"),
                    (
                        quantile(0.5, "llmserve_router_time_to_first_byte_seconds", R, "model"),
                        "first byte {{model}} p50",
                    ),
                    (
                        quantile(0.99, "llmserve_router_time_to_first_byte_seconds", R, "model"),
                        "first byte {{model}} p99",
                    ),
                ],
            ),
            (
                "Router errors/s",
                "timeseries",
                "reqps",
                "4xx and 5xx answers at the router, per model (`unknown`: ids the app does not serve).",
                [
                    (
                        "sum by (model, status_class) "
                        f'(rate(llmserve_router_requests_total{{{R}, status_class=~"4xx|5xx"}}[{WINDOW}]))',
                        "{{model}} {{status_class}}",
                    )
                ],
            ),
            (
                "Tokens/s at the router",
                "timeseries",
                "short",
                "Prompt and completion tokens from the answers' usage.",
                [
                    (rate("llmserve_router_prompt_tokens_total", R, "model"), "prompt {{model}}"),
                    (rate("llmserve_router_completion_tokens_total", R, "model"), "completion {{model}}"),
                ],
            ),
            (
                "Tokens per request at the router, 7 days",
                "stat",
                "short",
                "Average prompt + completion tokens per successful request, per model.",
                [
                    (
                        f"(({increase('llmserve_router_prompt_tokens_total', R, '7d', 'model')}"
                        f" + {increase('llmserve_router_completion_tokens_total', R, '7d', 'model')})"
                        f" / {increase('llmserve_router_requests_total', R2XX, '7d', 'model')}) >= 0",
                        "{{model}}",
                    )
                ],
            ),
            (
                "Input : generated at the router, 24 h",
                "stat",
                "short",
                "Prompt tokens per completion token over the last day.",
                [
                    (
                        f"({increase('llmserve_router_prompt_tokens_total', R, '24h')}"
                        f" / {increase('llmserve_router_completion_tokens_total', R, '24h')}) >= 0",
                        "ratio",
                    )
                ],
            ),
            (
                "Peak completion tokens/s at the router, 24 h",
                "stat",
                "short",
                "Highest 2-minute completion-token rate per model over the last day.",
                [
                    (
                        "max_over_time((sum by (model) "
                        f"(rate(llmserve_router_completion_tokens_total{{{R}}}[2m])))[24h:15s])",
                        "{{model}}",
                    )
                ],
            ),
            (
                "In flight and ready replicas",
                "timeseries",
                "short",
                "Requests in flight at the router and the replicas it can send to, per model.",
                [
                    (f"sum by (model) (llmserve_router_requests_in_flight{{{R}}})", "in flight {{model}}"),
                    (f"sum by (model) (llmserve_router_ready_replicas{{{R}}})", "ready replicas {{model}}"),
                ],
            ),
            (
                "Replica picks by reason",
                "timeseries",
                "reqps",
                "How the routing policy chose replicas: affinity (the prefix's own replica), overflow (the next "
                "one, over the load bound), fallback (no prefix or stale engine figures), least_outstanding.",
                [(rate("llmserve_router_picks_total", R, "model, policy, reason"), "{{model}} {{policy}} {{reason}}")],
            ),
            (
                "Retries, ejections, refused connections",
                "timeseries",
                "short",
                "Requests retried on another replica, replicas ejected for failures, and connections the router "
                "and the model servers refused at their connection cap (per second).",
                [
                    (rate("llmserve_router_retries_total", R, "model"), "retries {{model}}"),
                    (rate("llmserve_router_ejections_total", R, "model"), "ejections {{model}}"),
                    (
                        f"sum(rate(llmserve_router_connections_refused_total{{{APP}}}[{WINDOW}]))",
                        "refused at the router",
                    ),
                    (
                        f"sum by (pod) (rate(llmserve_http_connections_refused_total{{{APP_POD}}}[{WINDOW}]))",
                        "refused at {{pod}}",
                    ),
                ],
            ),
        ],
    ),
    (
        "Tenants (API keys on)",
        [
            (
                "Tokens/s by tenant, top 10",
                "timeseries",
                "short",
                "Prompt and completion tokens per tenant from the answers' usage; the ten busiest tenants.",
                [
                    (
                        f"topk(10, sum by (tenant) (rate(llmserve_router_tenant_tokens_total{{{R}}}[{WINDOW}])))",
                        "{{tenant}}",
                    )
                ],
            ),
            (
                "Requests/s by tenant",
                "timeseries",
                "reqps",
                "Requests per tenant by status class (429s for a tenant's own limits included).",
                [
                    (
                        rate("llmserve_router_tenant_requests_total", R, "tenant, status_class"),
                        "{{tenant}} {{status_class}}",
                    )
                ],
            ),
            (
                "Rate-limited by tenant",
                "timeseries",
                "reqps",
                "Requests refused (429) by a tenant's limit: requests or tokens per minute, or requests at once.",
                [(rate("llmserve_router_tenant_rate_limited_total", APP, "tenant, limit"), "{{tenant}} {{limit}}")],
            ),
            (
                "In flight by tenant",
                "timeseries",
                "short",
                "Requests of each tenant being served now.",
                [(f"sum by (tenant) (llmserve_router_tenant_requests_in_flight{{{APP}}})", "{{tenant}}")],
            ),
        ],
    ),
]

SERVING_VARS = [
    ("namespace", "Namespace", "label_values(llmserve_http_requests_in_flight, namespace)"),
    (
        "application",
        "Application",
        'label_values(llmserve_http_requests_in_flight{namespace=~"$namespace"}, llmserve_app)',
    ),
    (
        "model",
        "Model",
        'label_values(llmserve_http_requests_in_flight{namespace=~"$namespace", llmserve_app=~"$application"}, model)',
    ),
    (
        "replica",
        "Replica",
        'label_values(llmserve_http_requests_in_flight{namespace=~"$namespace", llmserve_app=~"$application", '
        'model=~"$model"}, pod)',
    ),
]

# === the operator dashboard ===
OPERATOR = [
    (
        "Reconciles",
        [
            (
                "Reconciles/s by result",
                "timeseries",
                "ops",
                "LlmApplication reconciles per second: success, invalid (spec refused), error.",
                [(rate("llmserve_operator_reconciles_total", OP, "result"), "{{result}}")],
            ),
            (
                "Errors/s by reason",
                "timeseries",
                "ops",
                "Reconcile errors by their stable reason label.",
                [(rate("llmserve_operator_reconcile_errors_total", OP, "reason"), "{{reason}}")],
            ),
            (
                "Reconcile duration",
                "timeseries",
                "s",
                "Time one reconcile takes: p50, p99.",
                [
                    (quantile(0.5, "llmserve_operator_reconcile_duration_seconds", OP, "namespace"), "p50"),
                    (quantile(0.99, "llmserve_operator_reconcile_duration_seconds", OP, "namespace"), "p99"),
                ],
            ),
        ],
    ),
    (
        "Fleet",
        [
            (
                "Applications and models",
                "stat",
                "short",
                "LlmApplications and models the last usage collection saw.",
                [(f"max by (kind) (llmserve_usage_applications{{{OP}}})", "{{kind}}")],
            ),
            (
                "Models by architecture and accelerator",
                "piechart",
                "short",
                "Models served, by architecture and accelerator type.",
                [
                    (
                        f"sum by (architecture, accelerator_type) (llmserve_usage_info{{{OP}}})",
                        "{{architecture}} {{accelerator_type}}",
                    )
                ],
            ),
            (
                "Leader",
                "stat",
                "short",
                "1 on the operator replica that holds the lease.",
                [(f"max by (pod) (llmserve_operator_leader{{{OP}}})", "{{pod}}")],
            ),
            (
                "Usage stats",
                "stat",
                "short",
                "1 when usage stats are collected (off: --usage-stats=false or LLMSERVE_USAGE_STATS_ENABLED=0).",
                [(f"max(llmserve_operator_usage_stats_enabled{{{OP}}})", "enabled")],
            ),
        ],
    ),
]

OPERATOR_VARS = [("namespace", "Namespace", "label_values(llmserve_operator_leader, namespace)")]


def variables(query_vars):
    out = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {"text": "Prometheus", "value": "prometheus"},
            "hide": 0,
            "refresh": 1,
            "options": [],
        }
    ]
    for name, label, query in query_vars:
        out.append(
            {
                "name": name,
                "label": label,
                "type": "query",
                "datasource": DS,
                "query": {"query": query, "refId": f"{name}-values", "qryType": 1},
                "refresh": 2,
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"text": ["All"], "value": ["$__all"]},
                "sort": 1,
                "hide": 0,
                "options": [],
            }
        )
    out.append(
        {
            "name": "interval",
            "label": "Rate window",
            "type": "interval",
            "query": "1m,2m,5m,15m,1h",
            "current": {"text": "1m", "value": "1m"},
            "options": [{"text": v, "value": v, "selected": v == "1m"} for v in ["1m", "2m", "5m", "15m", "1h"]],
            "hide": 0,
            "refresh": 2,
        }
    )
    return out


def panel(pid, title, kind, unit, description, targets, pos):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": pos,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": e,
                "legendFormat": legend,
                "range": kind == "timeseries",
                "instant": kind != "timeseries",
            }
            for i, (e, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        p["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        }
    elif kind == "stat":
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        }
    else:
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "pieType": "pie",
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "values": ["value", "percent"],
            },
        }
    return p


def dashboard(uid, title, description, rows, query_vars, tags):
    panels, pid, y = [], 1, 0
    for row_title, row_panels in rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        pid, y = pid + 1, y + 1
        for i, (title, kind, unit, desc, targets) in enumerate(row_panels):
            w = 6 if kind == "stat" else (8 if kind == "piechart" else 12)
            per_row = 24 // w
            pos = {"h": 8, "w": w, "x": (i % per_row) * w, "y": y + (i // per_row) * 8}
            panels.append(panel(pid, title, kind, unit, desc, targets, pos))
            pid += 1
        y += (
            ((len(row_panels) + 1) // 2) * 8
            if all(k == "timeseries" for _, k, *_ in row_panels)
            else ((len(row_panels) + 3) // 4) * 8 + 8
        )
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": tags,
        "editable": True,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [],
        "panels": panels,
        "templating": {"list": variables(query_vars)},
    }


DASHBOARDS = {
    "llm-serving.json": dashboard(
        "llmserve-serving",
        "llmserve / LLM serving",
        "Requests, tokens, latency (TTFT, TPOT), KV cache, scheduler and errors of the models llmserve serves; "
        "vLLM metric names.",
        SERVING,
        SERVING_VARS,
        ["llmserve", "llm", "vllm"],
    ),
    "llmserve-operator.json": dashboard(
        "llmserve-operator",
        "llmserve / Operator",
        "Reconciles, errors, reconcile duration and the fleet the llmserve operator manages.",
        OPERATOR,
        OPERATOR_VARS,
        ["llmserve", "operator"],
    ),
}

FOLDER = "llmserve"


def configmaps(files):
    """The kube-prometheus-stack sidecar convention: label grafana_dashboard=1, folder annotation."""
    docs = ["# Generated by dashboards/generate.py (the dashboards of charts/llmserve/dashboards); do not edit."]
    for name, text in files.items():
        body = "\n".join("    " + line for line in text.rstrip("\n").split("\n"))
        docs.append(f"""---
apiVersion: v1
kind: ConfigMap
metadata:
  name: llmserve-dashboard-{name.removesuffix(".json")}
  labels:
    grafana_dashboard: "1"
    app.kubernetes.io/part-of: llmserve
  annotations:
    grafana_folder: {FOLDER}
    k8s-sidecar-target-directory: /tmp/dashboards/{FOLDER}
data:
  {name}: |-
{body}""")
    return "\n".join(docs) + "\n"


CHART_DASHBOARDS = HERE.parent / "charts" / "llmserve" / "dashboards"


def rendered():
    """Every generated file: the dashboards, in the Helm chart (a chart can only read files inside
    itself), and their ConfigMaps."""
    files = {name: json.dumps(d, indent=2) + "\n" for name, d in DASHBOARDS.items()}
    out = {CHART_DASHBOARDS / name: text for name, text in files.items()}
    out[HERE / "configmaps.yaml"] = configmaps(files)
    return out


# What a query means with every template variable at "All" (and the rate window at 1m).
ALL_VALUES = {"namespace": ".*", "application": ".*", "model": ".*", "replica": ".*", "interval": "1m"}


def fill(expr, **values):
    """`expr` with its template variables replaced: `values` over ALL_VALUES; an unknown one is a KeyError."""
    v = {**ALL_VALUES, **values}
    return re.sub(r"\$(\w+)", lambda m: v[m.group(1)], expr)


def query_panels(dashboard):
    """The panels of a generated dashboard that hold queries (rows hold none)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def engine_panels():
    """Titles of serving panels whose queries need engine metrics (`vllm:` / `llmserve:` families)."""
    return [
        t
        for _, ps in SERVING
        for (t, _, _, _, targets) in ps
        if any("vllm:" in e or "llmserve:" in e for e, _ in targets)
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="fail when a checked-in file is stale")
    ap.add_argument("--engine-panels", action="store_true", help="list the panels that need engine metrics")
    args = ap.parse_args()
    if args.engine_panels:
        print("\n".join(engine_panels()))
        return 0
    stale = []
    for path, text in rendered().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(HERE.parent)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python3 dashboards/generate.py", file=sys.stderr)
    # The dashboards live in the chart only: a copy anywhere else would drift.
    copies = [str(p.relative_to(HERE.parent)) for p in HERE.glob("*.json")]
    if copies:
        print(f"copies of the chart's dashboards: {', '.join(copies)}; remove them", file=sys.stderr)
    return 1 if stale or copies else 0


if __name__ == "__main__":
    sys.exit(main())
