"""The compact feature envelope (wire version 2): its bytes per inference, a byte-exact golden encoding,
version 1 and 2 decoding to the same message, and hostile bytes meeting only SchemaErrors."""
from __future__ import annotations

from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.hand_on import FeaturesUpstream
from gateway.pseudonyms import Pseudonyms
from schemas import FeatureMessage, Malformed, Names, SchemaError, UnknownVersion, WrongType, compact
from schemas.compact import Catalog, Model, Origin, UnknownModel, entry_bytes, model_ref
from schemas.names import FIELD
from tests.gateway_fixtures import mutated

NAMES = Names()
GATEWAY = "home-1"
ORIGIN = Origin.of_stream(NAMES, NAMES.features("digit", GATEWAY))
DEFAULTS = {"glasses": Model("glasses-3f2a9c01b4de", "int8", (1,)), "digit": Model("digit-8d0e51c7a2f9", "int8", (9,))}
"""The features of ``privedge train``'s default (private) bundles: classes - 1 int8 numbers (README)."""
CATALOG = Catalog(DEFAULTS.values())
BUDGET = 64
"""Bytes per inference the default bundles may send up (issue 16)."""


def _message(task: str, *, device: str = "cam-1", seq: int = 7, boot: int | None = 0x9A3F_1C2B_44D1,
             ts: float = 1_765_432_100.125, ts_sent: float = 1_765_432_101.5, face: int | None = None,
             features: np.ndarray | None = None) -> FeatureMessage:
    model = DEFAULTS[task]
    x = features if features is not None else np.arange(1, 1 + model.shape[0], dtype=model.dtype)
    return FeatureMessage.from_array(x, gateway=GATEWAY, device=device, seq=seq, boot=boot, ts=ts,
                                     ts_sent=ts_sent, task=task, model=model.model_id,
                                     reply=NAMES.results(GATEWAY), face=face)


def _origin(task: str) -> Origin:
    return Origin.of_stream(NAMES, NAMES.features(task, GATEWAY))


def _sent(task: str, pseudonyms: Pseudonyms | None, *, device: str, seq: int, age_s: float,
          face: int | None = None) -> dict:
    """The stream entry the gateway's hand-on writes for one input of the default bundle of ``task``."""
    model = DEFAULTS[task]
    hand_on = FeaturesUpstream(None, None, NAMES.features(task, GATEWAY), pseudonyms=pseudonyms)
    loop = SimpleNamespace(s=SimpleNamespace(id=GATEWAY), task=task, model_id=model.model_id,
                           reply=NAMES.results(GATEWAY))
    now = 1_765_432_100.0
    ready = SimpleNamespace(device=device, seq=seq, ts=now - age_s, media=SimpleNamespace(boot=2**48 - 1),
                            face_index=face)
    x = np.full(model.shape, -128, model.dtype)
    return {FIELD: hand_on.message(loop, ready, x, now)}


@pytest.mark.parametrize("pseudonymous", [False, True])
@pytest.mark.parametrize("task", ["glasses", "digit"])
def test_the_default_bundles_send_at_most_64_bytes_per_inference(task, pseudonymous):
    """Field name and value, as Redis stores them, of what the gateway writes: for long-running sensors
    (4-billion seqs), inputs up to a minute old, device ids of up to 16 characters, one face of many, and
    pseudonyms (whose seqs are 49-bit numbers)."""
    pseudonyms = Pseudonyms(b"k" * 32) if pseudonymous else None
    sizes = {}
    for device in ("c", "kitchen-camera-2", "living_room_mic1"):
        for seq in (0, 2**32 - 1):
            for age in (0.0, 1.5, 60.0):
                for face in ((None, 99) if task == "glasses" else (None,)):
                    fields = _sent(task, pseudonyms, device=device, seq=seq, age_s=age, face=face)
                    sizes[(device, seq, age, face)] = entry_bytes(fields)
                    msg = compact.decode(fields[FIELD], _origin(task), CATALOG)
                    assert msg.device == (pseudonyms.hide(device, 2**48 - 1, seq, ts=1_765_432_100.0)[0]
                                          if pseudonyms else device)
    worst = max(sizes.values())
    print(f"\n[wire v2] {task}{' pseudonymous' if pseudonymous else ''}: {min(sizes.values())}-{worst} B "
          f"per inference (v1: {entry_bytes({FIELD: _message(task).encode()})} B)")
    assert worst <= BUDGET, {k: v for k, v in sizes.items() if v > BUDGET}


def test_version_1_still_goes_up_when_asked_for():
    hand_on = FeaturesUpstream(None, None, NAMES.features("digit", GATEWAY), wire_version=1)
    loop = SimpleNamespace(s=SimpleNamespace(id=GATEWAY), task="digit", model_id=DEFAULTS["digit"].model_id,
                           reply=NAMES.results(GATEWAY))
    ready = SimpleNamespace(device="mic-1", seq=3, ts=1.0, media=SimpleNamespace(boot=None), face_index=None)
    data = hand_on.message(loop, ready, np.zeros(9, np.int8), 2.0)
    assert FeatureMessage.decode(data).id == "home-1/mic-1/3"
    assert compact.decode(data, ORIGIN, CATALOG) == FeatureMessage.decode(data)


def test_golden_encoding():
    """The byte-exact wire form: a change here is a wire change (a new version), never an accident."""
    data = compact.encode(_message("digit", face=None))
    assert data.hex() == ("98" "02" "a5" "63616d2d31" "cf00009a3f1c2b44d1" "07" "cf0000019b0bf4051d" "cd055f"
                          "ce2f68d469" "c409" "010203040506070809")  # 2f68d469: sha256("digit-8d0e51c7a2f9")[:4]


@pytest.mark.parametrize("task,kw", [("digit", {}), ("digit", {"boot": None}), ("glasses", {"face": 3}),
                                     ("glasses", {"device": "d" + "a2" * 10}), ("digit", {"seq": 2**63 - 1}),
                                     ("digit", {"ts_sent": 1_765_432_000.0})])
def test_version_1_and_2_decode_to_the_same_message(task, kw):
    msg = _message(task, **kw)
    v1, v2 = msg.encode(), compact.encode(msg)
    assert compact.decode(v2, _origin(task), CATALOG) == compact.decode(v1, _origin(task), CATALOG) == msg


names = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=64)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@PROPERTY
@given(task=st.sampled_from(sorted(DEFAULTS)), device=names | st.from_regex(compact.PSEUDONYM, fullmatch=True),
       boot=st.none() | st.integers(0, 2**63 - 1), seq=st.integers(0, 2**63 - 1),
       ts_ms=st.integers(0, 2**42), age_ms=st.integers(-10**6, 10**7), face=st.none() | st.integers(0, 9999),
       data=st.binary(min_size=9, max_size=9))
def test_every_valid_message_round_trips(task, device, boot, seq, ts_ms, age_ms, face, data):
    model = DEFAULTS[task]
    if device == "status" or ts_ms + age_ms < 0:  # a reserved device id; a send time before 1970
        return
    x = np.frombuffer(data[:model.shape[0]], np.int8)
    msg = _message(task, device=device, boot=boot, seq=seq, ts=ts_ms / 1000, ts_sent=(ts_ms + age_ms) / 1000,
                   face=face, features=x)
    assert compact.decode(compact.encode(msg), _origin(task), CATALOG) == msg


hostile = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
                       | st.text(max_size=30) | st.binary(max_size=30),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                   max_size=3), max_leaves=8)


@PROPERTY
@given(data=st.binary(max_size=120))
def test_random_bytes_raise_only_schema_errors(data):
    try:
        compact.decode(data, ORIGIN, CATALOG)
    except SchemaError:
        pass


@PROPERTY
@given(position=st.integers(0, 9), value=hostile, action=st.sampled_from(["replace", "drop", "insert"]))
def test_wrong_items_raise_only_schema_errors(position, value, action):
    payload = mutated(msgpack.unpackb(compact.encode(_message("digit", face=None))), position, value, action)
    try:
        msg = compact.decode(payload, ORIGIN, CATALOG)
    except SchemaError:
        return
    assert msg.validate() is None and msg.gateway == GATEWAY and msg.reply == NAMES.results(GATEWAY)


@PROPERTY
@given(cut=st.integers(0, 48), tail=st.binary(max_size=8))
def test_truncated_or_extended_entries_raise_only_schema_errors(cut, tail):
    data = compact.encode(_message("digit"))
    for payload in (data[:cut], data + tail):
        if payload == data:
            continue
        with pytest.raises(SchemaError):
            compact.decode(payload, ORIGIN, CATALOG)


def test_each_fault_has_its_reason():
    good = msgpack.unpackb(compact.encode(_message("digit")))

    def decode(items):
        return compact.decode(msgpack.packb(items, use_bin_type=True), ORIGIN, CATALOG)

    with pytest.raises(UnknownVersion):
        decode([3, *good[1:]])
    with pytest.raises(UnknownVersion):
        decode([True, *good[1:]])
    with pytest.raises(Malformed):
        decode(good[:7])
    with pytest.raises(UnknownModel):
        decode([*good[:6], model_ref("digit-000000000000"), *good[7:]])
    with pytest.raises(SchemaError, match="needs 9 bytes"):
        decode([*good[:7], b"\x00" * 8])
    with pytest.raises(WrongType):
        decode([*good[:4], 1.5, *good[5:]])  # a float time
    with pytest.raises(WrongType):
        decode([good[0], b"\xff" * 13, *good[2:]])  # 104 bits are no 100-bit pseudonym
    with pytest.raises(SchemaError):
        decode([good[0], "cam/1", *good[2:]])  # a device id that would forge another path in the id
    with pytest.raises(Malformed):
        compact.decode(msgpack.packb("a string"), ORIGIN, CATALOG)


def test_a_catalog_refuses_two_models_of_one_reference(monkeypatch):
    assert len(Catalog([DEFAULTS["digit"], DEFAULTS["digit"], DEFAULTS["glasses"]]).by_ref) == 2
    monkeypatch.setattr(compact, "model_ref", lambda model_id: 7)  # a clash, which SHA-256 makes rare
    with pytest.raises(ValueError, match="share the wire reference"):
        Catalog(DEFAULTS.values())
