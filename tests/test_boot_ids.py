"""Inference ids with a sensor boot id: the format, the optional ``boot`` field, sensors that send it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from schemas import AudioChunk, BadName, FeatureMessage, ImageFrame, Result, make_id, split_id
from schemas.upload import MediaMessage
from sensors.publisher import PublisherSettings, SensorPublisher


def test_ids_with_and_without_a_boot_id_round_trip():
    assert make_id("gw", "cam1", 7) == "gw/cam1/7"
    assert make_id("gw", "cam1", 7, 123) == "gw/cam1/123-7"
    assert split_id("gw/cam1/123-7") == ("gw", "cam1", 7, 123)
    assert split_id("gw/cam1/123-7").boot == 123 and split_id("gw/cam1/7").boot is None
    # Two boots of one sensor never share an id, even with the same seq.
    assert make_id("gw", "cam1", 0, 1) != make_id("gw", "cam1", 0, 2) != make_id("gw", "cam1", 0)


@pytest.mark.parametrize("bad", ["gw/cam1/-3", "gw/cam1/a-3", "gw/cam1/3-", "gw/cam1/1-2-3", "gw/cam1/",
                                 "gw/cam1/\u0663", "gw/cam1/1-\u0663", "gw/cam 1/1-3"])
def test_malformed_ids_are_refused(bad):
    with pytest.raises(BadName):
        split_id(bad)


def test_boot_travels_in_frames_chunks_features_media_and_results():
    frame = ImageFrame.from_array(np.zeros((2, 2), np.uint8), device="cam1", seq=4, ts=1.0, codec="raw", boot=99)
    assert ImageFrame.decode(frame.encode()).boot == 99
    chunk = AudioChunk(device="mic1", seq=5, boot=98, ts=1.0, utt="u", rate=8000, width=2, channels=1,
                       codec="pcm_s16le", final=True, data=b"\0\0")
    assert AudioChunk.decode(chunk.encode()).boot == 98
    # Absent boot: the field is left out of the wire form (older sensors and gateways are unaffected).
    plain = AudioChunk(device="mic1", seq=5, ts=1.0, utt="u", rate=8000, width=2, channels=1,
                       codec="pcm_s16le", final=True, data=b"")
    assert "boot" not in plain.to_wire() and AudioChunk.decode(plain.encode()).boot is None
    with pytest.raises(Exception):
        AudioChunk(device="mic1", seq=5, boot=-1, ts=1.0, utt="u", rate=8000, width=2, channels=1,
                   codec="pcm_s16le", final=True, data=b"").encode()
    media = MediaMessage.wrap(frame, gateway="gw", ts_sent=2.0, task="glasses", model="m", reply="r")
    assert media.id == "gw/cam1/99-4" and MediaMessage.decode(media.encode()).boot == 99
    f = FeatureMessage.from_array(np.zeros(8, np.float32), gateway="gw", device="cam1", seq=4, boot=99, ts=1.0,
                                  ts_sent=2.0, task="glasses", model="m", reply="r")
    again = FeatureMessage.decode(f.encode())
    assert again.id == "gw/cam1/99-4" and again.boot == 99
    res = Result(id=again.id, task="glasses", model="m", label="x", score=1.0, ts=1.0, ts_done=2.0, worker="w")
    body = json.loads(res.to_json())
    assert (body["device"], body["seq"], body["boot"], res.boot, res.seq) == ("cam1", 4, 99, 99, 4)


def test_each_sensor_start_picks_a_fresh_boot_id_and_counts_from_zero():
    s = PublisherSettings(broker="mqtt://127.0.0.1:1", device="cam1")
    a, b = SensorPublisher(s), SensorPublisher(s)
    assert a.boot != b.boot and a.next_seq() == 0 == b.next_seq()
    assert SensorPublisher(PublisherSettings(broker="mqtt://127.0.0.1:1", device="cam1", boot=5)).boot == 5
    with pytest.raises(ValueError):
        PublisherSettings(broker="mqtt://127.0.0.1:1", device="cam1", boot=-1)
