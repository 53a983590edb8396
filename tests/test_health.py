"""The health server both services run: liveness, readiness with reasons, metrics, and --check's status."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from common.health import HealthServer, Probes, check


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def state():
    return {"loop": True, "redis": True}


@pytest.fixture
def server(state):
    def redis_probe():
        if state["redis"] == "raise":
            raise ConnectionError("connection refused")
        return state["redis"], "PONG" if state["redis"] else "no answer"

    registry = CollectorRegistry()
    Counter("privedge_test_entries", "entries", registry=registry).inc(3)
    srv = HealthServer(Probes(live={"loop": lambda: (state["loop"], "running" if state["loop"] else "died")},
                              ready={"redis": redis_probe}), registry).start()
    yield srv
    srv.stop()


def test_ready_and_alive_then_unready_with_the_reason_then_ready_again(server, state):
    assert _get(server.url + "/healthz")[0] == 200
    status, body = _get(server.url + "/readyz")
    assert status == 200 and json.loads(body)["checks"]["redis"] == {"ok": True, "detail": "PONG"}
    assert check(server.url) == 0
    state["redis"] = "raise"  # a probe that raises is a failed probe with its reason
    status, body = _get(server.url + "/readyz")
    assert status == 503 and "connection refused" in json.loads(body)["checks"]["redis"]["detail"]
    assert _get(server.url + "/healthz")[0] == 200  # unready is not dead
    assert check(server.url) == 1
    state["redis"] = True
    assert _get(server.url + "/readyz")[0] == 200


def test_a_dead_loop_fails_liveness_and_readiness(server, state):
    state["loop"] = False
    assert _get(server.url + "/healthz")[0] == 503
    assert _get(server.url + "/readyz")[0] == 503 and check(server.url) == 1


def test_metrics_parse_with_prometheus_clients_own_parser(server):
    status, body = _get(server.url + "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert status == 200 and families["privedge_test_entries"].samples[0].value == 3
    assert _get(server.url + "/nothing")[0] == 404


def test_check_of_nothing_listening_is_not_ready():
    assert check("http://127.0.0.1:9", timeout_s=1) == 1
