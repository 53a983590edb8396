"""Redis ACL users against a real redis-server: each client may do its part and nothing else, wrong
passwords and anonymous clients are refused, and the gateway and worker refuse to run with bad credentials."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from gateway.config import GatewaySettings
from gateway.service import Gateway, GatewayError
from broker import servers
from broker.redis_acl import AclUser, gateway_user, worker_user
from tests.gateway_fixtures import full_bundles, gateway_bundles  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

HOME, OTHER, WORKER = gateway_user("home", "home-pw"), gateway_user("other", "other-pw"), worker_user("worker-pw")
ADMIN = AclUser("admin", "admin-pw", "+@all ~*")  # the test's own inspection user
FEATURES, RESULTS, DEAD = ("privedge:features:{glasses:00}:home", "privedge:results:{home}",
                          "privedge:dead:{glasses:00}")


@pytest.fixture
def acl_redis(tmp_path):
    server = servers.redis(tmp_path / "redis", acl_users=[HOME, OTHER, WORKER, ADMIN])
    yield server
    server.stop()


def _client(user, server) -> redis.Redis:
    return redis.Redis.from_url(user.url("127.0.0.1", server.port))


def _refused(call) -> str:
    with pytest.raises((redis.exceptions.NoPermissionError, redis.AuthenticationError)) as e:
        call()
    return type(e.value).__name__


def test_each_user_does_its_part_and_nothing_else(acl_redis):
    gw, other, wk = (_client(u, acl_redis) for u in (HOME, OTHER, WORKER))
    # The gateway's part: add features, read and trim its own results, keep its cursor.
    gw.xadd(FEATURES, {"m": b"f"})
    gw.xadd("privedge:media:{glasses:00}:home", {"m": b"raw"})
    # The worker's part: the consumer group, read, reclaim, results + dead letter + ack in one MULTI/EXEC.
    wk.xgroup_create(FEATURES, "analyzers", id="0", mkstream=True)
    ((_, [(eid, _)]),) = wk.xreadgroup("analyzers", "w1", {FEATURES: ">"}, count=10)
    assert wk.xautoclaim(FEATURES, "analyzers", "w2", 0, start_id="0-0")[1][0][0] == eid
    assert wk.xpending_range(FEATURES, "analyzers", min="-", max="+", count=5)[0]["message_id"] == eid
    pipe = wk.pipeline(transaction=True)
    pipe.xadd(RESULTS, {"m": b"r"}).xadd(DEAD, {"m": b"d"}).xack(FEATURES, "analyzers", eid)
    assert pipe.execute()[2] == 1
    assert [f for _, f in gw.xread({RESULTS: "0"})[0][1]] == [{b"m": b"r"}]
    assert gw.set(RESULTS + ":cursor", "1-0") and gw.get(RESULTS + ":cursor") == b"1-0"
    gw.xtrim(RESULTS, minid="0-0")

    refused = {
        "worker adds features": _refused(lambda: wk.xadd(FEATURES, {"m": b"forged"})),
        "worker reads a home's cursor": _refused(lambda: wk.get(RESULTS + ":cursor")),
        "gateway reads features": _refused(lambda: gw.xread({FEATURES: "0"})),
        "gateway consumes features": _refused(lambda: gw.xreadgroup("analyzers", "g", {FEATURES: ">"})),
        "gateway writes results": _refused(lambda: gw.xadd(RESULTS, {"m": b"forged"})),
        "another home reads our results": _refused(lambda: other.xread({RESULTS: "0"})),
        "another home moves our cursor": _refused(lambda: other.set(RESULTS + ":cursor", "0-0")),
        "gateway deletes a stream": _refused(lambda: gw.delete(FEATURES)),
        "worker flushes": _refused(lambda: wk.flushall()),
        "wrong password": _refused(lambda: redis.Redis(port=acl_redis.port, username="worker",
                                                         password="guess").ping()),
        "anonymous": _refused(lambda: redis.Redis(port=acl_redis.port).ping()),
    }
    print("\n[redis ACL] refused: " + ", ".join(f"{k} ({v})" for k, v in refused.items()))
    assert _client(ADMIN, acl_redis).xlen(FEATURES) == 1  # the forged feature is not there


def test_gateway_and_worker_refuse_to_run_with_a_wrong_password(acl_redis, gateway_bundles, full_bundles):
    bad = HOME.url("127.0.0.1", acl_redis.port).replace(":home-pw@", ":wrong@")
    s = GatewaySettings(broker="mqtt://127.0.0.1:1", redis=bad, bundles=(str(gateway_bundles["image"]),),
                        id="home", warm_up=False)
    with pytest.raises(GatewayError, match="refused"):
        Gateway(s).start()
    bad = WORKER.url("127.0.0.1", acl_redis.port).replace(":worker-pw@", ":b4d-guess@")
    out = subprocess.run([sys.executable, "-m", "privedge.cli", "worker", "--redis", bad, "--bundle",
                          str(full_bundles["image"])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "refused" in out.stderr and "Traceback" not in out.stderr
    assert "b4d-guess" not in out.stderr  # the password is not logged


def test_worker_password_from_the_environment(acl_redis, full_bundles):
    from workers.service import Worker, parse_args

    os.environ["PRIVEDGE_REDIS_PASSWORD"] = "worker-pw"
    try:
        settings = parse_args(["--redis", f"redis://worker@127.0.0.1:{acl_redis.port}",
                               "--bundle", str(full_bundles["image"])])
    finally:
        del os.environ["PRIVEDGE_REDIS_PASSWORD"]
    worker = Worker(settings)
    _client(HOME, acl_redis).xadd(FEATURES, {"m": b"f"})
    worker.ensure_groups()  # would raise AuthenticationError without the password
    assert _client(ADMIN, acl_redis).xinfo_groups(FEATURES)[0]["name"] == b"analyzers"


def test_acl_file_tool_stores_hashes_and_redis_loads_it(tmp_path):
    out = tmp_path / "users.acl"
    env = {**os.environ, "PRIVEDGE_REDIS_PASSWORD_GATEWAY_HOME": "s3cret-home"}
    run = subprocess.run([sys.executable, "-m", "broker.redis_acl", "--gateway", "home", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=60, check=True)
    worker_pw = run.stdout.split("worker: ", 1)[1].split()[0]  # generated, printed once
    text = out.read_text()
    assert "s3cret-home" not in text and worker_pw not in text and "user default off" in text
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    server = servers.redis(tmp_path / "r", extra=["--aclfile", str(out)])
    try:
        home = redis.Redis(port=server.port, username="gateway-home", password="s3cret-home")
        assert home.xadd(FEATURES, {"m": b"f"})
        worker = redis.Redis(port=server.port, username="worker", password=worker_pw)
        worker.xgroup_create(FEATURES, "analyzers", id="0")
        assert len(worker.xreadgroup("analyzers", "w", {FEATURES: ">"})[0][1]) == 1
    finally:
        server.stop()


def test_print_settings_hides_the_password_in_the_redis_url():
    out = subprocess.run([sys.executable, "-m", "privedge.cli", "gateway", "--print-settings",
                          "--redis", "redis://gateway-home:t0p-secret@cloud:6379/0"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "t0p-secret" not in out.stdout and "gateway-home:***@cloud:6379" in out.stdout


def test_compose_runs_redis_with_the_acl_users():
    import yaml

    repo = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    services = compose["services"]
    command = services["redis"]["command"]
    assert command[command.index("--aclfile") + 1] == "/run/secrets/redis_acl" and "redis_acl" in services["redis"]["secrets"]
    gateway = yaml.safe_load((repo / "deploy" / "gateway.yaml").read_text())
    gw_url = services["gateway"]["environment"]["PRIVEDGE_REDIS"]
    assert urlsplit(gw_url).username == gateway_user(gateway["id"], "").name and urlsplit(gw_url).password is None
    assert gateway["redis_password_file"] == "/run/secrets/gateway_redis_password"
    worker = yaml.safe_load((repo / "deploy" / "worker.yaml").read_text())
    assert urlsplit(worker["redis"]).username == WORKER.name and urlsplit(worker["redis"]).password is None
    assert worker["redis_password_file"] == "/run/secrets/worker_redis_password"


def test_a_worker_transaction_survives_an_appendonly_restart(tmp_path):
    """redis-server 7.0 replays MULTI/EXEC from the append-only file as the default user: with the ACL
    file's default user, the worker's results and XACKs must come back after a restart."""
    server = servers.redis(tmp_path / "r", appendonly=True, acl_users=[WORKER, ADMIN])
    try:
        _client(ADMIN, server).xadd(FEATURES, {"m": b"f"})
        wk = _client(WORKER, server)
        wk.xgroup_create(FEATURES, "analyzers", id="0")
        ((_, [(eid, _)]),) = wk.xreadgroup("analyzers", "w1", {FEATURES: ">"})
        wk.pipeline(transaction=True).xadd(RESULTS, {"m": b"r"}).xack(FEATURES, "analyzers", eid).execute()
        server.stop()
        server.start()
        admin = _client(ADMIN, server)
        assert admin.xlen(RESULTS) == 1 and admin.xpending(FEATURES, "analyzers")["pending"] == 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:  # no AUTH at all
            raw.sendall(b"XADD privedge:features:glasses * m forged\r\n")
            assert raw.recv(200).startswith(b"-NOAUTH")
        assert admin.xlen(FEATURES) == 1
    finally:
        server.stop()
