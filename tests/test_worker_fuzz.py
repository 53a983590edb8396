"""Fuzzing what reaches a worker: random bytes, structurally wrong maps, wrong dtype or shape, unknown
models, oversize entries. None may crash or hang the worker; each is dead-lettered with a reason, and a
good message right after still gets its result. The number of inputs tried is printed."""
from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from models.bundle import make_untrained_bundle, read_manifest
from schemas import FeatureMessage, Limits, Names, SchemaError, compact
from schemas.names import GROUP
from schemas.results import Result
from tests.conftest import FAST
from tests.gateway_fixtures import mutated
from workers.config import RedisSettings, WorkerSettings
from workers.batch_write import DEAD_LETTER_BYTES
from workers.service import Worker

pytestmark = pytest.mark.integration
NAMES = Names()
EXAMPLES = 100 if FAST else 400
TRIED: dict[str, int] = {}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(worker, manifest): a worker on a fresh redis-server, not started (the tests drive handle())."""
    from broker import servers

    root = tmp_path_factory.mktemp("fuzz")
    make_untrained_bundle(root / "b", "image")
    server = servers.redis(root / "redis")
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(server.url), bundles=(root / "b",), block_ms=20))
    manifest = read_manifest(root / "b")
    worker.redis.xgroup_create(NAMES.features(manifest["task"], "gw"), GROUP, id="0", mkstream=True)
    worker.ensure_groups()  # finds gateway gw's (empty) stream
    yield worker, manifest
    server.stop()
    print("\n[worker fuzz] inputs tried: " + ", ".join(f"{k}={v}" for k, v in TRIED.items())
          + f", total={sum(TRIED.values())}")


def _good_wire(manifest, seq: int = 1) -> dict:
    shape = tuple(manifest["feature"]["shape"])
    return FeatureMessage.from_array(np.zeros(shape, manifest["feature"]["dtype"]), gateway="gw", device="cam",
                                     seq=seq, ts=1.0, ts_sent=1.0, task=manifest["task"],
                                     model=manifest["model"], reply=NAMES.results("gw")).to_wire()


def _handle_one(worker: Worker, payload: bytes, kind: str) -> bytes | None:
    """Hand ``payload`` to the worker as one stream entry: exactly one result (None is returned) or one
    dead letter (its reason is returned), quickly."""
    TRIED[kind] = TRIED.get(kind, 0) + 1
    stream = next(iter(worker.streams))
    dead = NAMES.dead(worker.streams[stream])
    before = worker.redis.xlen(dead)
    results = worker.redis.xlen(NAMES.results("gw"))
    t0 = time.monotonic()
    worker.handle([(stream, b"0-1", {b"m": payload})])
    assert time.monotonic() - t0 < 5, "worker took too long on one entry"
    got = (worker.redis.xlen(NAMES.results("gw")) - results, worker.redis.xlen(dead) - before)
    assert got in ((1, 0), (0, 1)), got
    if got == (1, 0):
        return None
    (_, fields), = worker.redis.xrevrange(dead, count=1)
    # the dead letter keeps the message, cut at DEAD_LETTER_BYTES (a hostile one is not copied whole)
    assert fields[b"reason"] and fields[b"m"] == payload[:DEAD_LETTER_BYTES]
    return fields[b"reason"]


def _dead_letter_one(worker: Worker, payload: bytes, kind: str) -> bytes:
    reason = _handle_one(worker, payload, kind)
    assert reason is not None, "a bad entry produced a result"
    return reason


FUZZ = settings(max_examples=EXAMPLES, deadline=5000, suppress_health_check=[HealthCheck.too_slow],
                database=None)
values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                      | st.binary(max_size=40), lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(served, data):
    worker, manifest = served
    assert _dead_letter_one(worker, data, "random bytes").startswith(b"undecodable")


@FUZZ
@given(field=st.sampled_from(["v", "id", "gateway", "device", "seq", "ts", "ts_sent", "task", "model", "dtype",
                              "shape", "data", "reply", "extra"]),
       value=values, drop=st.booleans())
def test_structurally_wrong_maps(served, field, value, drop):
    worker, manifest = served
    wire = _good_wire(manifest)
    if drop:
        wire.pop(field, None)
    else:
        wire[field] = value
    payload = msgpack.packb(wire, use_bin_type=True)
    try:
        FeatureMessage.decode(payload)
        valid = True
    except SchemaError:
        valid = False
    reason = _handle_one(worker, payload, "wrong maps")
    if not valid:  # a message that does not decode is dead-lettered as such
        assert reason is not None and reason.startswith(b"undecodable"), reason


@FUZZ
@given(dtype=st.sampled_from(["float16", "float64", "int8", "uint8", "int32", "complex64", "object", "<f4", ""]),
       shape=st.lists(st.integers(-2, 40), max_size=4), extra=st.integers(-8, 8))
def test_wrong_dtype_or_shape(served, dtype, shape, extra):
    worker, manifest = served
    wire = _good_wire(manifest)
    if dtype == manifest["feature"]["dtype"] and list(shape) == list(manifest["feature"]["shape"]) and not extra:
        return
    n = int(np.prod([max(s, 0) for s in shape])) if shape else 1
    wire.update(dtype=dtype, shape=shape, data=b"\x00" * max(0, min(n * 4 + extra, 4096)))
    reason = _dead_letter_one(worker, msgpack.packb(wire, use_bin_type=True), "wrong dtype/shape")
    assert reason.startswith(b"undecodable") or reason == b"feature shape mismatch"


@FUZZ
@given(model=st.text(min_size=1, max_size=40))
def test_unknown_model(served, model):
    worker, manifest = served
    if model == manifest["model"]:
        return
    wire = _good_wire(manifest)
    wire["model"] = model
    reason = _dead_letter_one(worker, msgpack.packb(wire, use_bin_type=True), "unknown model")
    assert reason == b"unknown model" or reason.startswith(b"undecodable"), reason


def _good_items(manifest, seq: int = 1) -> list:
    """A good message as its version 2 array (schemas.compact)."""
    return msgpack.unpackb(compact.encode(FeatureMessage.from_wire(_good_wire(manifest, seq))))


def _decodes(payload: bytes, manifest, worker: Worker) -> bool:
    """Whether ``payload`` decodes as an entry of gateway gw's stream (either wire version)."""
    try:
        compact.decode(payload, compact.Origin("gw", manifest["task"], NAMES.results("gw")), worker.analysis.catalog)
        return True
    except SchemaError:
        return False


@FUZZ
@given(position=st.integers(0, 9), value=values, action=st.sampled_from(["replace", "drop", "insert"]))
def test_structurally_wrong_version_2_arrays(served, position, value, action):
    """Version 2 entries with an item replaced by anything, dropped or added: what does not decode is
    dead-lettered as undecodable (or as an unknown model), what does gets its result."""
    worker, manifest = served
    payload = mutated(_good_items(manifest), position, value, action)
    valid = _decodes(payload, manifest, worker)
    reason = _handle_one(worker, payload, "wrong v2 arrays")
    if not valid:
        assert reason is not None and (reason.startswith(b"undecodable") or reason == b"unknown model"), reason


@FUZZ
@given(tail=st.binary(max_size=80), cut=st.integers(0, 60))
def test_version_2_heads_with_hostile_tails(served, tail, cut):
    """A good version 2 entry cut anywhere and followed by random bytes: dead-lettered, never a crash."""
    worker, manifest = served
    good = compact.encode(FeatureMessage.from_wire(_good_wire(manifest)))
    payload = good[:min(cut, len(good) - 1)] + tail
    if payload == good:
        return
    reason = _handle_one(worker, payload, "v2 hostile tails")
    # random feature bytes may decode and then be refused by the bundle's feature checks
    assert reason is None or reason.startswith(b"undecodable") or reason in (
        b"unknown model", b"non-finite features", b"features out of range"), reason


def test_oversize_is_refused_before_decoding(served):
    """A well-formed message one byte over the limit is refused by size, not parsed."""
    worker, manifest = served
    wire = _good_wire(manifest)
    wire["pad"] = b""
    base = len(msgpack.packb(wire, use_bin_type=True))
    wire["pad"] = b"x" * (Limits().max_feature_payload + 16 - base)
    payload = msgpack.packb(wire, use_bin_type=True)
    assert len(payload) > Limits().max_feature_payload
    assert _dead_letter_one(worker, payload, "oversize") == b"undecodable: too large"
    huge = b"\xc6" + (2**31).to_bytes(4, "big")  # bin32 header claiming 2 GiB, no body
    assert _dead_letter_one(worker, huge + b"\x00" * Limits().max_feature_payload, "oversize").startswith(b"undecodable")


def test_running_worker_survives_a_stream_of_poison_then_serves(served):
    """The worker's own loop: poison entries in the stream are all dead-lettered, then a good one is served."""
    worker, manifest = served
    stream = next(iter(worker.streams))
    rng = np.random.default_rng(0)
    poison = [rng.bytes(int(rng.integers(0, 200))) for _ in range(50)]
    poison += [msgpack.packb({**_good_wire(manifest), "model": f"m{i}"}, use_bin_type=True) for i in range(10)]
    good_v2 = compact.encode(FeatureMessage.from_wire(_good_wire(manifest)))
    cut = [good_v2[:int(rng.integers(1, len(good_v2)))] + rng.bytes(int(rng.integers(0, 40))) for _ in range(20)]
    poison += [p for p in cut if not _decodes(p, manifest, worker)]  # a random tail may complete the data
    poison += [msgpack.packb([2, *_good_items(manifest)[1:6], i, *_good_items(manifest)[7:]]) for i in range(5)]
    TRIED["stream poison"] = len(poison)
    dead = NAMES.dead(manifest["task"])
    before, results_before = worker.redis.xlen(dead), worker.redis.xlen(NAMES.results("gw"))
    for p in poison:
        worker.redis.xadd(stream, {"m": p})
    worker.redis.xadd(stream, {"m": msgpack.packb(_good_wire(manifest, seq=99), use_bin_type=True)})
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while worker.redis.xpending(stream, GROUP)["pending"] or worker.redis.xlen(dead) < before + len(poison):
            assert time.monotonic() < deadline, "worker did not get through the poison"
            time.sleep(0.05)
        results = [Result.decode(f[b"m"]) for _, f in worker.redis.xrange(NAMES.results("gw"))][results_before:]
        assert [r.id for r in results] == ["gw/cam/99"]
        assert worker._thread.is_alive()
    finally:
        worker.stop()
    assert worker.redis.xlen(dead) == before + len(poison)
