"""The gateway against hostile inputs, with real mosquitto and redis-server: an input whose processing
raises an exception no decoder declares, and a payload refused for its size, which is never parsed again."""
from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import redis

from schemas import AudioChunk, ImageFrame, Limits
from tests.gateway_fixtures import Listener, features_in, gateway_bundles, make_gateway, wait_until  # noqa: F401

pytestmark = pytest.mark.integration


def test_an_input_that_raises_an_unexpected_exception_is_rejected_and_the_loop_goes_on(
        make_gateway, mosquitto, redis_server):
    """A model whose preprocess raises KeyError for one input, and whose network raises
    ZeroDivisionError for another (exception types no decoder declares): each input is rejected with a
    reason, acknowledged and counted by device; the loop goes on serving."""
    gw = make_gateway(warm_up=False)
    (loop,) = [lp for lp in gw.loops if lp.kind == "image"]
    preprocess, extract = loop.model.preprocess, loop.model.extract_batch

    def poisoned_preprocess(raw):
        if int(raw.reshape(-1)[0]) == 7:
            raise KeyError("no such channel")
        return preprocess(raw)

    def poisoned_extract(xs):
        if any(np.array_equal(np.asarray(x), poison_x) for x in xs):
            raise ZeroDivisionError("division by zero")
        return extract(xs)

    def frame(seq: int, fill: int):
        img = np.full((40, 48, 3), fill, np.uint8)
        return ImageFrame.from_array(img, device="cam1", seq=seq, ts=time.time(), codec="raw")

    poison_x = np.asarray(preprocess(frame(0, 9).pixels()))
    loop.model.preprocess, loop.model.extract_batch = poisoned_preprocess, poisoned_extract
    lis = Listener(mosquitto.port)
    lis.publish("privedge/cam1/image", frame(1, 7).encode())   # preprocess raises KeyError
    lis.publish("privedge/cam1/image", frame(2, 9).encode())   # the network raises ZeroDivisionError
    lis.publish("privedge/cam1/image", frame(3, 100).encode())  # served
    r = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: [f.id for f in features_in(r, "glasses")] == ["gw1/cam1/3"]), gw.metrics.snapshot()
    errors = "privedge/gateway/gw1/errors"
    assert lis.wait_for(lambda l: len(l.messages[errors]) >= 2)
    reports = sorted((e["seq"], e["reason"]) for e in lis.json(errors))
    assert reports == [(1, "undecodable media"), (2, "model failed")], reports
    assert {e["seq"]: e["detail"].split(":")[0] for e in lis.json(errors)} == {
        1: "preprocessing failed", 2: "ZeroDivisionError"}
    assert gw.metrics.count("rejected_by_device", "cam1") == 2
    assert gw.failed() is None and loop.thread.is_alive()
    lis.close()


def test_a_refused_payload_is_not_parsed_again_for_the_error_report(make_gateway, mosquitto):
    """An AudioChunk over the payload limit (with a valid seq inside) is refused as too large, and its
    report's seq is null: the gateway does not parse a refused payload to find it."""
    gw = make_gateway(warm_up=False)
    chunk = AudioChunk(device="mic1", seq=77, ts=time.time(), utt="big", rate=8000, width=2, channels=1,
                       codec="pcm_s16le", final=True, data=b"\x00" * (Limits().max_audio_payload + 2))
    lis = Listener(mosquitto.port)
    lis.publish("privedge/mic1/audio", msgpack.packb(chunk.to_wire(), use_bin_type=True))
    errors = "privedge/gateway/gw1/errors"
    assert lis.wait_for(lambda l: len(l.messages[errors]) >= 1)
    (report,) = lis.json(errors)
    assert report["reason"] == "too large" and report["seq"] is None
    assert gw.failed() is None
    lis.close()
