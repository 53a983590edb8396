"""The health server both services run: liveness, readiness with reasons, metrics, and --check's status."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from broker import servers
from common.health import HealthServer, Probes, check
from gateway import service as gateway_service
from tests.conftest import REPO
from tests.metrics_names import parse, problems
from tests.gateway_fixtures import (Listener, full_bundles, gateway_bundles, image_frame,  # noqa: F401
                                    make_gateway, wait_until)


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


OLD_CATCH_ALL = """# HELP privedge_gateway_gauge current values
# TYPE privedge_gateway_gauge gauge
privedge_gateway_gauge{gateway="gw1",name="image_queue"} 3.0
# HELP privedge_gateway_publish_ms publish time
# TYPE privedge_gateway_publish_ms gauge
privedge_gateway_publish_ms{gateway="gw1"} 1.5
# HELP privedge_gateway_received inputs
# TYPE privedge_gateway_received gauge
privedge_gateway_received{gateway="gw1"} 7.0
# HELP privedge_gateway_latency latency
# TYPE privedge_gateway_latency histogram
privedge_gateway_latency_bucket{le="+Inf"} 1.0
privedge_gateway_latency_count 1.0
privedge_gateway_latency_sum 0.5
"""


def test_the_naming_rules_catch_a_catch_all_gauge_abbreviated_units_and_a_unitless_histogram():
    found = problems(OLD_CATCH_ALL)
    assert any("privedge_gateway_gauge: the metric type in its name" in p for p in found), found
    assert any("privedge_gateway_gauge: a 'name' label" in p for p in found), found
    assert any("privedge_gateway_publish_ms: abbreviated unit 'ms'" in p for p in found), found
    assert any("privedge_gateway_latency: a histogram with no unit suffix" in p for p in found), found
    assert not any(p.startswith("privedge_gateway_received") for p in found)  # a gauge may be unitless
    good = "# HELP privedge_x_sent_bytes_total sent\n# TYPE privedge_x_sent_bytes_total counter\n" \
           "privedge_x_sent_bytes_total 3.0\n"
    assert problems(good) == []


def test_check_of_nothing_listening_is_not_ready():
    assert check("http://127.0.0.1:9", timeout_s=1) == 1


# --- the gateway's endpoints, on the real broker and a Redis of the test's own ----------------------------

def test_the_gateway_turns_unready_when_redis_stops_and_ready_when_it_returns(make_gateway, tmp_path):
    store = servers.redis(tmp_path / "redis")
    try:
        gw = make_gateway(redis=store.url, metrics_port=0, warm_up=False)
        assert wait_until(lambda: _get(gw.health_url + "/readyz")[0] == 200, 20)
        assert gateway_service.main(["--check", "--metrics-port", str(gw._metrics_server.port)]) == 0
        store.stop()
        t0 = time.monotonic()
        assert wait_until(lambda: _get(gw.health_url + "/readyz")[0] == 503, 10)
        assert time.monotonic() - t0 < 5.0  # the bound
        status, body = _get(gw.health_url + "/readyz")
        assert not json.loads(body)["checks"]["redis"]["ok"] and json.loads(body)["checks"]["mqtt"]["ok"]
        assert _get(gw.health_url + "/healthz")[0] == 200  # unready, not dead
        assert gateway_service.main(["--check", "--metrics-port", str(gw._metrics_server.port)]) == 1
        store.start()
        assert wait_until(lambda: _get(gw.health_url + "/readyz")[0] == 200, 20)

        def kinds() -> set[str]:  # each loop sets its gauges after its first wait for inputs (0.2 s)
            family = parse(_get(gw.metrics_url)[1].decode()).get("privedge_gateway_queued_inputs")
            return {s.labels["kind"] for s in family.samples} if family else set()

        assert wait_until(lambda: kinds() == {"image", "audio"}, 5)  # the loops' gauges by kind
        text = _get(gw.metrics_url)[1].decode()
        families = parse(text)
        assert "privedge_gateway_received" in families and "process_resident_memory_bytes" in families
        assert problems(text) == []
        assert "privedge_gateway_gauge" not in families  # no catch-all family: the gauges have names
        assert families["privedge_gateway_upstream_available"].samples[0].value == 1.0
        assert families["privedge_gateway_result_latency_seconds"].type == "histogram"
    finally:
        store.stop()


BROKEN_LOOP = """
import sys
import gateway.extraction as extraction
def broken(self, items):
    raise SystemExit("the loop thread dies")  # not an Exception: no per-input catch holds it
extraction.ExtractionLoop.process = broken
from privedge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_gateway_whose_loop_thread_dies_fails_liveness_then_exits_non_zero(mosquitto, redis_server,
                                                                             gateway_bundles, tmp_path):
    port = _free_port()
    args = ["gateway", "--broker", mosquitto.url, "--redis", redis_server.url, "--id", "gwdie",
            "--bundle", str(gateway_bundles["image"]), "--metrics-port", str(port)]
    log = open(tmp_path / "gateway.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", BROKEN_LOOP, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PRIVEDGE_FACE_DETECTOR": "none"})
    lis = Listener(mosquitto.port, client_id="die-listener")
    try:
        assert lis.wait_for(lambda l: l.messages.get("privedge/gateway/gwdie/status", [])[-1:] == [b"online"], 120)
        url = f"http://127.0.0.1:{port}"
        assert _get(url + "/healthz")[0] == 200
        lis.publish("privedge/cam1/image", image_frame("cam1", 1).encode())
        assert wait_until(lambda: proc.poll() is not None or _get(url + "/healthz")[0] == 503, 30)
        assert proc.wait(60) != 0, (tmp_path / "gateway.log").read_text()[-2000:]
    finally:
        lis.close()
        if proc.poll() is None:
            proc.kill()
        log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_worker_serves_health_and_named_metrics_and_check_follows_redis(full_bundles, tmp_path):  # noqa: F811
    store = servers.redis(tmp_path / "redis")
    port = _free_port()
    args = ["worker", "--redis", store.url, "--bundle", str(full_bundles["image"]), "--name", "wh",
            "--health-port", str(port), "--block-ms", "50"]
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "privedge.cli", *args], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _get_or_none(url + "/readyz") == 200, 120), (tmp_path / "worker.log").read_text()
        assert _check(args) == 0
        text = _get(url + "/metrics")[1].decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("privedge_worker_entries", "privedge_worker_results", "privedge_worker_batch_seconds",
                     "privedge_worker_group_lag", "privedge_worker_group_pending", "process_cpu_seconds"):
            assert name in families, sorted(families)
        assert families["privedge_worker_batch_seconds"].type == "histogram"
        assert problems(text) == []
        store.stop()
        assert wait_until(lambda: _get_or_none(url + "/readyz") == 503, 10)
        assert _get(url + "/healthz")[0] == 200 and _check(args) == 1
        store.start()
        assert wait_until(lambda: _get_or_none(url + "/readyz") == 200, 20)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            store.stop()


def _check(worker_args: list[str]) -> int:
    return subprocess.run([sys.executable, "-m", "privedge.cli", *worker_args, "--check"], cwd=REPO,
                          capture_output=True, timeout=60).returncode


def _get_or_none(url: str) -> int | None:
    try:
        return _get(url)[0]
    except OSError:
        return None
