"""Prometheus metrics on /metrics: requests by status, stages, rows, validation, models."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Server


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


def test_metrics_count_requests_rows_and_broken_rules(server: Server) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    ok = '{model="iris-segments",protocol="v1",status="200"}'
    bad = '{model="iris-segments",protocol="v1",status="400"}'
    start_ok = _value(before, f"foretell_requests_total{ok}") if ok in before else 0.0
    url = f"{server.url}/v1/models/iris-segments:predict"
    httpx.post(url, json={"instances": [[5.0, 3.0, 1.5, 0.2], [6.0, 3.0, 4.5, 1.5]]})
    httpx.post(url, json={"instances": [[5.0, "x", 1.5, 0.2]]})
    httpx.post(f"{server.url}/v1/models/no-such-model:predict", json={"instances": []})
    text = httpx.get(f"{server.url}/metrics").text
    assert _value(text, f"foretell_requests_total{ok}") == start_ok + 1
    assert _value(text, f"foretell_requests_total{bad}") >= 1
    assert 'foretell_requests_total{model="(unknown)",protocol="v1",status="404"}' in text
    assert (
        _value(
            text,
            'foretell_validation_failures_total{field="sepal width (cm)",'
            'model="iris-segments",rule="type"}',
        )
        >= 1
    )
    assert _value(text, 'foretell_rows_scored_total{model="iris-segments",version="1"}') >= 2
    for stage in ("validate", "preprocess", "forward", "postprocess", "decide"):
        assert (
            f'foretell_stage_duration_seconds_count{{model="iris-segments",stage="{stage}"}}'
            in text
        )
    assert _value(text, 'foretell_model_ready{model="breast-cancer",version="2"}') == 1
    assert 'foretell_model_load_seconds{model="sentiment",version="1"}' in text
    assert 'foretell_requests_in_flight{model="iris-segments"} 0.0' in text
