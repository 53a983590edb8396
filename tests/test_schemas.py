"""Wire formats: round trips, a byte-exact golden encoding, one test per kind of bad input, fuzzing."""
from __future__ import annotations

import io
import json

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from schemas import (AudioChunk, BadName, BadTensor, ErrorReport, FeatureMessage, ImageFrame, Limits,
                     Malformed, MissingField, Names, Result, SchemaError, TooLarge, UndecodableMedia,
                     UnknownVersion, WrongType, decode_image, make_id, parse_sensor_topic, split_id)
from schemas.media import encode_image, float_to_pcm16, pcm16_to_array, split_pcm

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


def _frame(**kw) -> ImageFrame:
    return ImageFrame.from_array(IMG, device="cam1", seq=7, ts=1700000000.25, codec=kw.pop("codec", "png"))


def _chunk() -> AudioChunk:
    return AudioChunk(device="mic1", seq=8, ts=1700000000.5, utt="mic1-1", rate=8000, width=2, channels=1,
                      codec="pcm_s16le", final=True, data=float_to_pcm16(np.linspace(-1, 1, 80)))


def _features(dtype="float32") -> FeatureMessage:
    return FeatureMessage.from_array(np.linspace(-2, 2, 8).astype(dtype), gateway="gw", device="cam1",
                                     seq=7, ts=1700000000.25, ts_sent=1700000000.5, task="glasses",
                                     model="glasses-3f2a9c01b4de", reply="privedge:results:gw")


def _result() -> Result:
    return Result(id="gw/cam1/7", task="glasses", model="glasses-3f2a9c01b4de", label="glasses",
                  score=0.75, scores={"glasses": 0.75, "no_glasses": 0.25}, ts=1700000000.25,
                  ts_done=1700000000.75, worker="w1")


def _error() -> ErrorReport:
    return ErrorReport(source="gw", device="cam1", seq=7, topic="privedge/cam1/image", reason="too large",
                       detail="payload of 9 MB", ts=1700000001.0)


MESSAGES = {"image": _frame, "audio": _chunk, "features": _features, "result": _result, "error": _error}


@pytest.mark.parametrize("make", MESSAGES.values(), ids=MESSAGES.keys())
def test_every_message_round_trips(make):
    msg = make()
    data = msg.encode()
    back = type(msg).decode(data)
    assert back == msg
    assert back.encode() == data


@pytest.mark.parametrize("codec", ["png", "raw", "jpeg"])
def test_image_pixels_round_trip(codec):
    frame = ImageFrame.decode(_frame(codec=codec).encode())
    pixels = decode_image(frame)
    assert pixels.shape == IMG.shape and pixels.dtype == np.uint8
    if codec == "jpeg":  # lossy: close, not equal
        assert np.abs(pixels.astype(int) - IMG).mean() < 40
    else:
        assert np.array_equal(pixels, IMG)


def test_gray_image_and_pgm_mode():
    gray = RNG.integers(0, 256, size=(9, 4), dtype=np.uint8)
    frame = ImageFrame.from_array(gray, device="c", seq=0, ts=0.0)
    assert frame.ch == 1 and np.array_equal(ImageFrame.decode(frame.encode()).pixels(), gray)


def test_features_array_and_dtypes():
    for dtype in ("float32", "float16", "int8", "uint8"):
        msg = FeatureMessage.decode(_features(dtype).encode())
        assert msg.array().dtype == np.dtype(dtype) and msg.array().shape == (8,)
        assert np.array_equal(msg.array(), np.linspace(-2, 2, 8).astype(dtype))
    assert _features().id == "gw/cam1/7" and split_id("gw/cam1/7") == ("gw", "cam1", 7, None)


def test_audio_samples_and_chunking():
    wave = np.sin(np.arange(1000) / 10.0).astype(np.float32)
    pieces = split_pcm(float_to_pcm16(wave), rate=8000, channels=1, chunk_ms=40)
    assert [len(p) for p in pieces] == [640, 640, 640, 80]
    joined = pcm16_to_array(b"".join(pieces))[:, 0]
    assert np.abs(joined / 32767.0 - wave).max() < 1e-4
    assert _chunk().duration_s == pytest.approx(0.01)


def test_golden_feature_encoding_is_byte_exact():
    msg = FeatureMessage(id="g/d/1", gateway="g", device="d", seq=1, ts=2.0, ts_sent=3.0, task="t",
                         model="m", dtype="uint8", shape=(2,), data=b"\x01\x02", reply="r")
    golden = (b"\x8d\xa1v\x01\xa2id\xa5g/d/1\xa7gateway\xa1g\xa6device\xa1d\xa3seq\x01"
              b"\xa2ts\xcb@\x00\x00\x00\x00\x00\x00\x00\xa7ts_sent\xcb@\x08\x00\x00\x00\x00\x00\x00"
              b"\xa4task\xa1t\xa5model\xa1m\xa5dtype\xa5uint8\xa5shape\x91\x02\xa4data\xc4\x02\x01\x02"
              b"\xa5reply\xa1r")
    assert msg.encode() == golden
    assert FeatureMessage.decode(golden) == msg


def test_result_json_for_home_apps():
    body = json.loads(_result().to_json(now=1700000001.25))
    for key in ("id", "device", "seq", "task", "label", "score", "ts", "latency_ms"):
        assert key in body
    assert (body["device"], body["seq"], body["latency_ms"]) == ("cam1", 7, 1000.0)
    assert json.loads(_error().to_json())["reason"] == "too large"


def _mutate(make, change):
    wire = make().to_wire()
    change(wire)
    return msgpack.packb(wire, use_bin_type=True)


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, "PNG")
    return buf.getvalue()


def _set(**kw):
    return lambda m: m.update(kw)


def _del(key):
    return lambda m: m.pop(key)


SMALL = Limits(max_image_payload=4096, max_image_pixels=100, max_feature_payload=512,
               max_tensor_elements=16, max_audio_payload=2048)

# (decoder class, factory, mutation or raw bytes, expected error)
BAD = [
    # every decoder: not msgpack, not a map, unknown version, missing v, missing field, mistyped, oversize
    *[(type(f()), f, b"\xc1\xc1", Malformed) for f in MESSAGES.values()],
    *[(type(f()), f, msgpack.packb([1, 2]), Malformed) for f in MESSAGES.values()],
    *[(type(f()), f, _set(v=2), UnknownVersion) for f in MESSAGES.values()],
    *[(type(f()), f, _del("v"), MissingField) for f in MESSAGES.values()],
    *[(type(f()), f, _set(v="1"), WrongType) for f in MESSAGES.values()],
    (ImageFrame, _frame, _del("data"), MissingField),
    (AudioChunk, _chunk, _del("final"), MissingField),
    (FeatureMessage, _features, _del("shape"), MissingField),
    (Result, _result, _del("label"), MissingField),
    (ErrorReport, _error, _del("reason"), MissingField),
    (ImageFrame, _frame, _set(seq="7"), WrongType),
    (ImageFrame, _frame, _set(codec="gif"), WrongType),
    (ImageFrame, _frame, _set(ch=2), WrongType),
    (AudioChunk, _chunk, _set(final=1), WrongType),
    (AudioChunk, _chunk, _set(data="text"), WrongType),
    (AudioChunk, _chunk, _set(rate=10), WrongType),
    (FeatureMessage, _features, _set(shape=[2, "x"]), WrongType),
    (FeatureMessage, _features, _set(ts=float("nan")), WrongType),
    (Result, _result, _set(score=1.5), WrongType),
    (Result, _result, _set(scores={"a": "b"}), WrongType),
    (ErrorReport, _error, _set(seq=-1), WrongType),
    (ImageFrame, _frame, _set(device="d" * 300), TooLarge),
    (Result, _result, _set(label="x" * 2000), TooLarge),
    # tensors
    (FeatureMessage, _features, _set(dtype="float64"), WrongType),
    (FeatureMessage, _features, _set(shape=[9]), BadTensor),
    (FeatureMessage, _features, _set(data=b"\x00" * 31), BadTensor),
    # media
    (ImageFrame, _frame, _set(codec="raw", data=b"\x00" * 5), UndecodableMedia),
    (AudioChunk, _chunk, _set(data=b"\x00" * 3), UndecodableMedia),
]


@pytest.mark.parametrize("cls, make, bad, error", BAD, ids=[f"{c.__name__}-{e.__name__}-{i}"
                                                            for i, (c, _, _, e) in enumerate(BAD)])
def test_bad_input_is_rejected_with_its_type(cls, make, bad, error):
    data = bad if isinstance(bad, bytes) else _mutate(make, bad)
    with pytest.raises(error) as info:
        cls.decode(data)
    assert isinstance(info.value, SchemaError) and info.value.reason


def test_unknown_extra_fields_are_ignored():
    for make in MESSAGES.values():
        msg = make()
        assert type(msg).decode(_mutate(make, _set(future_field=[1, 2], other=b"x"))) == msg


@pytest.mark.parametrize("cls, make", [(ImageFrame, _frame), (AudioChunk, _chunk),
                                       (FeatureMessage, _features)])
def test_size_limits_are_checked_before_decoding(cls, make):
    # A payload over the bound is refused even though its bytes are not msgpack at all.
    bound = getattr(SMALL, cls.PAYLOAD_LIMIT)
    with pytest.raises(TooLarge):
        cls.decode(b"\xc1" * (bound + 1), SMALL)


def test_tensor_element_bound():
    big = FeatureMessage.from_array(np.zeros(32, np.float32), gateway="g", device="d", seq=0, ts=0.0,
                                    ts_sent=0.0, task="t", model="m", reply="r")
    with pytest.raises(TooLarge):
        FeatureMessage.decode(big.encode(), SMALL)


def test_media_decode_errors():
    frame = _frame()
    with pytest.raises(UndecodableMedia):  # corrupt png
        decode_image(ImageFrame(**{**vars(frame), "data": frame.data[:20]}))
    with pytest.raises(UndecodableMedia):  # header says 20x20, frame says 6x5
        decode_image(ImageFrame(**{**vars(frame), "data": _png(20, 20)}))
    with pytest.raises(UndecodableMedia):  # a png claiming to be a jpeg
        decode_image(ImageFrame(**{**vars(frame), "codec": "jpeg"}))
    huge = ImageFrame(device="c", seq=0, ts=0.0, codec="png", w=20, h=20, ch=1, data=_png(20, 20))
    with pytest.raises(TooLarge):  # pixel bound checked before Pillow decompresses
        decode_image(huge, SMALL)
    with pytest.raises(TooLarge):
        ImageFrame.decode(huge.encode(), SMALL)


def _pillow_pixels(frame: ImageFrame) -> np.ndarray:
    with Image.open(io.BytesIO(frame.data)) as im:
        return np.asarray(im.convert({1: "L", 3: "RGB"}[frame.ch]))


def test_jpeg_frames_decode_to_the_pixels_pillow_gives():
    """The fast JPEG path (simplejpeg) gives Pillow's pixels exactly: grey ORL photographs, colour scenes,
    and a colour file declared grey (Pillow converts it), and refuses truncated files and wrong sizes."""
    from tests.conftest import DATA

    rng = np.random.default_rng(0)
    grey = [np.asarray(Image.open(DATA / "orl" / f"s{i}" / "1.pgm")) for i in (1, 7, 23)]
    colour = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
              np.repeat(np.repeat(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), 8, 0), 8, 1)]
    for img in grey + colour:
        frame = ImageFrame(device="c", seq=0, ts=0.0, **encode_image(img, "jpeg"))
        assert np.array_equal(decode_image(frame), _pillow_pixels(frame).reshape(decode_image(frame).shape))
    as_grey = ImageFrame(device="c", seq=0, ts=0.0, **{**encode_image(colour[0], "jpeg"), "ch": 1})
    assert np.array_equal(decode_image(as_grey), _pillow_pixels(as_grey))
    frame = ImageFrame(device="c", seq=0, ts=0.0, **encode_image(colour[1], "jpeg"))
    for cut in (50, len(frame.data) // 2, len(frame.data) - 4):
        with pytest.raises(UndecodableMedia):
            decode_image(ImageFrame(**{**vars(frame), "data": frame.data[:cut]}))
    with pytest.raises(UndecodableMedia, match="frame says"):
        decode_image(ImageFrame(**{**vars(frame), "w": frame.w - 1}))


def test_names_from_prefix():
    n = Names("home7")
    assert n.image("cam1") == "home7/cam1/image" and n.audio("m") == "home7/m/audio"
    assert n.status("cam1") == "home7/cam1/status" and n.result("cam1") == "home7/cam1/result"
    assert n.gateway_status("gw") == "home7/gateway/gw/status"
    assert n.gateway_errors("gw") == "home7/gateway/gw/errors"
    assert n.sensor_wildcards() == ["home7/+/image", "home7/+/audio"]
    assert (n.features("digit", "gw"), n.results("gw"), n.dead("digit")) == (
        "home7:features:{digit:00}:gw", "home7:results:{gw}", "home7:dead:{digit:00}")
    assert n.GROUP == "analyzers" and make_id("gw", "cam1", 3) == "gw/cam1/3"
    assert parse_sensor_topic("privedge/cam_1-a/audio") == ("cam_1-a", "audio")
    assert n.parse_sensor_topic("home7/cam1/image") == ("cam1", "image")


@pytest.mark.parametrize("topic", [
    "privedge/cam1/status", "privedge/cam1/image/x", "privedge//image", "other/cam1/image",
    "privedge/cam 1/image", "privedge/c+/image", "privedge/" + "d" * 65 + "/image", "privedge/gateway/image",
    "privedgeX/cam1/image", "privedge/cam1", "",
])
def test_malformed_topics_are_rejected(topic):
    with pytest.raises(BadName):
        parse_sensor_topic(topic)


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x" * 65, "é"])
def test_bad_ids_and_prefixes(bad):
    with pytest.raises(BadName):
        Names().image(bad)
    with pytest.raises(BadName):
        Names(bad + "/")


# Fuzzing: random bytes, and maps that look almost right, must only ever raise SchemaError subclasses.
DECODERS = [ImageFrame, AudioChunk, FeatureMessage, Result, ErrorReport]
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=20), st.binary(max_size=40))
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _near_maps():
    def build(make, drops, overrides):
        wire = make().to_wire()
        for key in drops:
            wire.pop(key, None)
        wire.update(overrides)
        return msgpack.packb(wire, use_bin_type=True)
    keys = st.sampled_from(sorted({k for f in MESSAGES.values() for k in f().to_wire()}))
    return st.builds(build, st.sampled_from(list(MESSAGES.values())), st.lists(keys, max_size=3),
                     st.dictionaries(keys, _value, max_size=3))


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_all(data: bytes) -> None:
    for cls in DECODERS:
        try:
            msg = cls.decode(data)
        except SchemaError:
            continue
        if isinstance(msg, ImageFrame):
            try:
                msg.pixels()
            except SchemaError:
                pass
        elif isinstance(msg, FeatureMessage):
            msg.array()


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _decode_all(data)


@FUZZ
@given(_near_maps())
def test_fuzz_structurally_wrong_maps(data):
    _decode_all(data)


@FUZZ
@given(_value)
def test_fuzz_arbitrary_msgpack_values(value):
    _decode_all(msgpack.packb(value, use_bin_type=True))


# msgpack structure bound (depth and total objects, before unpacking) ---------------------------------------
def _nested_empty_maps(payload_limit: int) -> bytes:
    """A map {"x": [[[{} x 60] x 256] x 256]} just under ``payload_limit``: about 3.9 million empty maps,
    each container within msgpack's per-container limits (256 items)."""
    inner = b"\xdc" + (60).to_bytes(2, "big") + b"\x80" * 60        # array16 of 60 empty fixmaps
    middle = b"\xdc" + (256).to_bytes(2, "big") + inner * 256
    data = b"\x81\xa1x" + b"\xdc" + (256).to_bytes(2, "big") + middle * 256
    assert len(data) <= payload_limit
    return data


def test_nested_arrays_of_empty_maps_are_refused_before_anything_is_allocated():
    """The 4 MiB payload of nested arrays of empty maps (issue finding 3) is refused with a clear reason,
    and decoding it allocates a bounded amount: peak traced memory well under the payload's own size
    (unpacked, it would take hundreds of MiB of dicts)."""
    import tracemalloc

    data = _nested_empty_maps(Limits().max_image_payload)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="more than .* objects|deeper than") as e:
            ImageFrame.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.reason == "too large"
    assert peak < 256 * 1024, f"peak traced memory {peak} bytes"


def test_deep_nesting_is_refused():
    deep = msgpack.packb({"v": 1, "device": [[[[[[["x"]]]]]]]}, use_bin_type=True)
    with pytest.raises(TooLarge, match="deeper than 4"):
        ImageFrame.decode(deep)
    very_deep = b"\x81\xa1x" + b"\x91" * 100_000 + b"\xc0"  # deeper than msgpack's own stack limit
    with pytest.raises(TooLarge, match="deeper than"):
        ImageFrame.decode(very_deep)


def test_the_structure_bound_counts_every_object_and_keeps_valid_messages():
    from schemas.structure import check_structure

    frame = ImageFrame(device="cam1", seq=1, ts=1.0, codec="raw", w=2, h=2, ch=1,
                       data=b"\x00" * 4).encode()
    assert ImageFrame.decode(frame).seq == 1
    n = len(msgpack.unpackb(frame)) * 2 + 1  # the top-level map, its keys and its values
    check_structure(frame, max_depth=1, max_objects=n)
    with pytest.raises(TooLarge, match=f"more than {n - 1} objects"):
        check_structure(frame, max_depth=1, max_objects=n - 1)
    with pytest.raises(Malformed, match="truncated"):
        check_structure(frame[:-1], 4, 100)
    with pytest.raises(Malformed, match="trailing"):
        check_structure(frame + b"\x00", 4, 100)
    with pytest.raises(Malformed, match="truncated"):
        check_structure(b"\xdd\xff\xff\xff\xff", 4, 100)  # array32 of 4 billion items, 0 bytes given
    # every wire type the walker skips: the same verdict as msgpack
    value = {"i": [0, -1, 127, -33, 255, 65535, 2**32, -2**40, 2**63], "f": [1.5, float("inf")], "n": None,
             "b": [True, False], "s": ["", "a" * 31, "b" * 300, "c" * 70_000], "bin": [b"", b"x" * 300],
             "m": {"k": {}}}
    packed = msgpack.packb(value, use_bin_type=True)
    check_structure(packed, 4, 100)
    ext = msgpack.packb(msgpack.ExtType(5, b"abc"))
    check_structure(ext, 1, 1)
