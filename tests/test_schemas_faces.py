"""Faces on the wire: the id of one face of a frame, and the Result fields the gateway adds per face."""
from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from schemas import BadName, FeatureMessage, Result, TooLarge, WrongType, face_of, make_id, split_id
from schemas.results import NO_FACE


def _result(**kw) -> Result:
    base = dict(id="gw/cam1/5-7#2", task="glasses", model="m", label="glasses", score=0.75,
                scores={"glasses": 0.75}, ts=1700000000.0, ts_done=1700000000.5, worker="w")
    return Result(**{**base, **kw})


def test_a_face_id_is_its_frame_id_then_its_index():
    assert make_id("gw", "cam1", 7, 5, face=2) == "gw/cam1/5-7#2"
    assert make_id("gw", "cam1", 7, face=0) == "gw/cam1/7#0"
    assert split_id("gw/cam1/5-7#2") == ("gw", "cam1", 7, 5) == split_id("gw/cam1/5-7")
    assert face_of("gw/cam1/5-7#2") == 2 and face_of("gw/cam1/7#0") == 0 and face_of("gw/cam1/5-7") is None
    # every face of a frame, and the frame itself, has an id of its own
    ids = {make_id("gw", "cam1", 7, 5)} | {make_id("gw", "cam1", 7, 5, face=i) for i in range(8)}
    assert len(ids) == 9


@pytest.mark.parametrize("bad", ["gw/cam1/7#", "gw/cam1/7#01", "gw/cam1/7#-1", "gw/cam1/7#1#2", "gw/cam1/7#x",
                                 "gw/cam1/7#10000", "gw/cam1/7#\u0663", "gw/cam1#1/7", "#1"])
def test_malformed_face_ids_are_refused(bad):
    """One spelling per face (no leading zeros): the dedup windows compare ids as strings."""
    with pytest.raises(BadName):
        split_id(bad)
    with pytest.raises(BadName):
        face_of(bad)


@pytest.mark.parametrize("face", [-1, 10000, True, 1.0])
def test_a_bad_face_index_is_refused(face):
    with pytest.raises(BadName):
        make_id("gw", "cam1", 7, face=face)


def test_a_face_feature_message_carries_the_face_id_and_nothing_of_the_box():
    f = FeatureMessage.from_array(np.zeros(8, np.float32), gateway="gw", device="cam1", seq=7, boot=5, ts=1.0,
                                  ts_sent=2.0, task="glasses", model="m", reply="r", face=3)
    again = FeatureMessage.decode(f.encode())
    assert again.id == "gw/cam1/5-7#3" and (again.device, again.seq, again.boot) == ("cam1", 7, 5)
    assert set(msgpack.unpackb(f.encode())) == {"v", "id", "gateway", "device", "seq", "boot", "ts", "ts_sent",
                                                "task", "model", "dtype", "shape", "data", "reply"}


def test_a_face_result_round_trips_and_its_json_has_face_box_and_summary():
    res = _result(box=(10, 20, 64, 72), faces_found=3, faces_answered=2)
    assert Result.decode(res.encode()) == res
    body = json.loads(res.to_json(now=1700000001.0))
    assert (body["id"], body["device"], body["seq"], body["boot"]) == ("gw/cam1/5-7#2", "cam1", 7, 5)
    assert body["face"] == 2 and body["box"] == [10, 20, 64, 72]
    assert body["faces"] == {"found": 3, "answered": 2}
    assert res.face == 2


def test_results_without_face_fields_decode_and_print_as_before():
    plain = _result(id="gw/cam1/5-7")
    wire = plain.to_wire()
    assert not {"box", "faces_found", "faces_answered"} & set(wire)
    assert Result.decode(msgpack.packb(wire)) == plain
    body = json.loads(plain.to_json(now=1700000001.0))
    assert not {"face", "box", "faces"} & set(body) and plain.face is None


def test_a_no_face_result_has_the_frame_id_and_a_summary_alone():
    res = _result(id="gw/cam1/5-7", label=NO_FACE, score=0.0, scores={}, faces_found=0, faces_answered=0)
    body = json.loads(Result.decode(res.encode()).to_json())
    assert body["label"] == "no_face" and body["faces"] == {"found": 0, "answered": 0}
    assert "face" not in body and "box" not in body


@pytest.mark.parametrize("change, error", [
    (dict(box=[1, 2, 3]), WrongType), (dict(box=[1, 2, 3, 4, 5]), TooLarge), (dict(box=[-1, 0, 4, 4]), WrongType),
    (dict(box=[0, 0, 4.5, 4]), WrongType), (dict(faces_found=2), WrongType), (dict(faces_answered=1), WrongType),
    (dict(faces_found=1, faces_answered=2), WrongType), (dict(faces_found=-1, faces_answered=0), WrongType)])
def test_bad_face_fields_are_refused(change, error):
    wire = {**_result().to_wire(), **change}
    with pytest.raises(error):
        Result.decode(msgpack.packb(wire, use_bin_type=True))
