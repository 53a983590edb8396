"""What the gateway and the worker share: one settings loader (the worker's ``--config`` included), the
Redis client, the back-off, warm-up and top-k."""
from __future__ import annotations

import numpy as np
import pytest

from common.backoff import Backoff
from common.redis_connection import RedisSettings
from common.top_k import TOP_K, top_k
from common.warm_up import warm_up
from workers.config import SettingsError, load_settings
from workers.service import parse_args


def test_the_gateway_and_the_worker_load_settings_through_the_same_code():
    import common.settings
    from gateway import config as gateway_config
    from workers import config as worker_config

    assert gateway_config.ConfigError is worker_config.SettingsError is common.settings.SettingsError
    assert gateway_config.merge is worker_config.merge is common.settings.merge


def test_worker_config_file_environment_and_flags(tmp_path):
    cfg = tmp_path / "worker.yaml"
    cfg.write_text("bundles: [b1, b2]\nbatch: 8\nblock_ms: 20\nredis: redis://file:6379\nreply_maxlen: 500\n")
    s = load_settings({"block_ms": 50}, config_file=cfg, env={"PRIVEDGE_REDIS": "redis://w@env:6380/1",
                                                               "PRIVEDGE_REDIS_PASSWORD": "pw",
                                                               "PRIVEDGE_BATCH": "99"})
    assert [str(b) for b in s.bundles] == ["b1", "b2"] and s.reply_maxlen == 500
    assert (s.batch, s.block_ms) == (8, 50)  # PRIVEDGE_BATCH is the gateway's: a worker reads only its own
    assert (s.redis.host, s.redis.port, s.redis.db, s.redis.username, s.redis.password) == ("env", 6380, 1, "w", "pw")
    toml = tmp_path / "worker.toml"
    toml.write_text('bundles = ["b"]\nname = "w-7"\nallow_unsigned = true\nretry_max_s = 2\n')
    s = load_settings({}, config_file=toml, env={})
    assert (s.name, s.allow_unsigned, s.retry_max_s, s.redis) == ("w-7", True, 2.0, RedisSettings())


def test_worker_settings_refuse_unknown_keys_secrets_in_files_and_wrong_types(tmp_path):
    cfg = tmp_path / "worker.yaml"
    cfg.write_text("bundles: [b]\nbatchsize: 8\n")
    with pytest.raises(SettingsError, match="unknown setting 'batchsize'; valid settings: .*block_ms"):
        load_settings({}, config_file=cfg, env={})
    cfg.write_text("bundles: [b]\nredis_password: hunter2\n")
    with pytest.raises(SettingsError, match="redis_password is a secret; set PRIVEDGE_REDIS_PASSWORD"):
        load_settings({}, config_file=cfg, env={})
    cfg.write_text("bundles: [b]\nbatch: 1.5\n")
    with pytest.raises(SettingsError, match="batch must be int"):
        load_settings({}, config_file=cfg, env={})
    (tmp_path / "pw").write_text("s3cret\n")
    s = load_settings({"bundles": ["b"], "redis_password_file": str(tmp_path / "pw")}, env={})
    assert s.redis.password == "s3cret" and "s3cret" not in repr(s)


def test_worker_command_line_takes_config_and_refuses_unknown_keys(tmp_path, capsys, monkeypatch):
    for var in ("PRIVEDGE_REDIS", "PRIVEDGE_WORKER_NAME", "PRIVEDGE_PREFIX", "PRIVEDGE_RUNTIME"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "worker.yaml"
    cfg.write_text("bundles: [from-file]\nprefix: home2\nmax_deliveries: 3\n")
    s = parse_args(["--config", str(cfg), "--max-deliveries", "7"])
    assert [str(b) for b in s.bundles] == ["from-file"] and s.prefix == "home2" and s.max_deliveries == 7
    s = parse_args(["--config", str(cfg), "--bundle", "x", "--bundle", "y"], env={"PRIVEDGE_WORKER_NAME": "n1"})
    assert [str(b) for b in s.bundles] == ["x", "y"] and s.name == "n1"
    cfg.write_text("bundles: [b]\nclaim_idle: 5\n")
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(cfg)])
    assert e.value.code == 2 and "unknown setting 'claim_idle'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args([], env={})  # no bundle anywhere
    assert "needs at least one --bundle" in capsys.readouterr().err


def test_the_redis_client_of_both_services_answers(redis_server):
    from gateway.config import GatewaySettings
    from gateway.upstream import connect_redis

    worker = RedisSettings.from_dsn(redis_server.url).client()
    gateway = connect_redis(GatewaySettings(redis=redis_server.url))
    worker.set("privedge-test-common", b"x")
    assert gateway.get("privedge-test-common") == b"x"
    assert worker.get_retry() == gateway.get_retry()  # one retry policy, redis-py's with jitter


def test_backoff_doubles_with_jitter_up_to_its_bound_and_resets():
    b = Backoff(0.1, 1.0)
    delays = [b.next() for _ in range(6)]
    for n, d in enumerate(delays):
        top = min(1.0, 0.1 * 2 ** n)
        assert top / 2 <= d <= top
    draws = {Backoff(0.1, 1.0).next() for _ in range(20)}
    assert len(draws) > 1  # jitter: two services that failed together do not retry together
    b.reset()
    assert 0.05 <= b.next() <= 0.1
    assert Backoff(0.0, 1.0).next() > 0  # never a busy loop


def test_top_k_keeps_the_most_probable_labels_best_first():
    probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05], np.float32)
    labels = ("a", "b", "c", "d", "e")
    assert [label for label, _ in top_k(probs, labels)] == ["b", "d", "a"] and TOP_K == 3
    assert top_k(probs, labels, k=1) == [("b", pytest.approx(0.5))]
    assert len(top_k(probs[:2], labels[:2])) == 2


class _Model:
    def __init__(self, with_extract: bool) -> None:
        self.seen, self.ran = [], []
        if with_extract:
            self.extract_batch = lambda xs: self.ran.append(("extract", xs))

    def preprocess(self, raw):
        self.seen.append(raw)
        return "x"

    def predict_batch(self, xs):
        self.ran.append(("predict", xs))


def test_warm_up_runs_one_dummy_input_through_the_model():
    extractor, full = _Model(True), _Model(False)
    assert warm_up(extractor.preprocess, extractor.extract_batch, "image") >= 0
    assert warm_up(full.preprocess, full.predict_batch, "speech") >= 0
    assert extractor.seen[0].shape == (64, 64) and extractor.seen[0].dtype == np.uint8
    wave, rate = full.seen[0]
    assert wave.dtype == np.float32 and not wave.any() and rate == 8000
    assert extractor.ran == [("extract", ["x"])] and full.ran == [("predict", ["x"])]


def test_a_redis_timeout_reaches_the_service_at_once_and_a_dropped_connection_is_retried_once():
    # A hung path must surface to the services' own loops (spool, back off) instead of waiting inside
    # redis-py for ten socket timeouts, as its default retry would; a closed connection is retried once.
    import redis as redis_lib

    from common.redis_connection import RedisSettings as RS

    conn = RS.from_dsn("redis://127.0.0.1:1").client().connection_pool.make_connection()
    assert conn.retry._retries == 1
    assert redis_lib.ConnectionError in conn.retry._supported_errors
    assert redis_lib.TimeoutError not in conn.retry._supported_errors
