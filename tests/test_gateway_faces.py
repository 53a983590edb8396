"""The gateway's face stage (gateway/faces.py): faces found, bounded and cropped as for training; one
feature message and one result per face, with its box; a "no face" result and nothing sent for a frame
without one; the frame acknowledged only after its last face; hostile frames rejected while it serves.

Scenes are real faces (ORL, LFW) pasted at known boxes on real photographs (bench/scenes.py); the
detector's own accuracy is measured by bench/face_detectors.py and tested in test_faces.py.
"""
from __future__ import annotations

import json
import time

import msgpack
import numpy as np
import pytest
import redis

from bench import scenes
from bench.face_detectors import iou
from gateway.config import ConfigError, GatewaySettings, load_settings
from gateway.extraction import ExtractionLoop
from gateway.hand_on import FeaturesUpstream
from gateway.faces import FaceLedger, FaceStage, frame_box
from gateway.intake import DeviceQueues, Inbound
from gateway.metrics import Metrics
from models.faces import FaceBox, FaceDetector, crop_face, crop_square, make_detector
from models.preprocess import image_to_input
from schemas import ImageFrame, Names, Result
from tests.gateway_fixtures import (Listener, feature_entry, features_in, full_bundles, gateway_bundles,  # noqa: F401 (fixtures)
                                    make_gateway, wait_until)
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker

MANIFEST = {"task": "glasses", "model": "glasses-000000000000", "labels": ["no_glasses", "glasses"]}
FEATURES = {**MANIFEST, "feature": {"dtype": "float32", "shape": [8]}}  # what the stub extractor below releases


@pytest.fixture(scope="module")
def detector():
    return make_detector()


@pytest.fixture(scope="module")
def scene():
    """A 1280x720 frame with three pasted faces of different sizes."""
    s = scenes.composites(2, seed=1234, split="test")[1]
    assert len(s.boxes) == 3 and s.image.shape == (720, 1280, 3)
    return s


def _stage(detector, **kw) -> FaceStage:
    opts = dict(gateway="gw1", task=MANIFEST["task"], model=MANIFEST["model"], max_faces=8, min_face_px=32,
                crop_max_px=128, metrics=Metrics(), ledger=FaceLedger(), publish=lambda topic, body: None,
                result_topic=Names().result)
    opts.update(kw)
    return FaceStage(detector, **opts)


# the stage -------------------------------------------------------------------------------------------
def test_each_face_of_a_scene_is_found_boxed_and_cropped_as_for_training(detector, scene):
    stage = _stage(detector)
    found = stage.find(scene.image)
    assert found.found == 3 and [f.index for f, _ in found.faces] == [0, 1, 2]
    boxes = np.array([f.box for f, _ in found.faces], dtype=np.float64)
    overlap = iou(scene.boxes, boxes)  # (true, found)
    assert (overlap.max(axis=1) >= 0.5).all() and len(set(overlap.argmax(axis=1))) == 3, overlap
    areas = boxes[:, 2] * boxes[:, 3]
    assert list(areas) == sorted(areas, reverse=True)  # largest first
    # The loop's preprocess (image_to_input) of the gateway's crop is the crop training and the audit use.
    for (face, crop), box in zip(found.faces, detector.detect(scene.image)):
        np.testing.assert_array_equal(crop, crop_square(scene.image, box))
        np.testing.assert_array_equal(image_to_input(crop), crop_face(scene.image, box))
    assert stage.metrics.count("faces_found") == 3 and stage.metrics.count("faces_skipped_small") == 0
    assert stage.metrics.snapshot()["stages"]["detect"]["items"] == 1


def test_small_faces_are_skipped_and_faces_past_max_faces_counted(detector, scene):
    sides = sorted(min(b.w, b.h) for b in detector.detect(scene.image))
    stage = _stage(detector, min_face_px=int(sides[0]) + 1, max_faces=1)  # the smallest is too small
    found = stage.find(scene.image)
    assert found.found == 3 and len(found.faces) == 1
    assert min(found.faces[0][0].box[2:]) >= sides[-1] - 1  # the largest one is kept
    m = stage.metrics
    assert (m.count("faces_found"), m.count("faces_skipped_small"), m.count("faces_over_max")) == (3, 1, 1)


def test_a_crop_sized_frame_is_taken_whole_and_a_larger_one_is_searched(detector):
    stage = _stage(detector)
    orl = scenes._orl("test")[0]  # a 92x112 ORL photo: what the networks were trained on
    assert stage.find(orl) is None and stage.find(np.zeros((64, 64), np.uint8)) is None
    assert stage.metrics.snapshot()["stages"] == {}  # no detection ran
    searched = _stage(detector, crop_max_px=0).find(orl)
    assert searched is not None and searched.found == 1


def test_face_boxes_are_whole_pixels_inside_the_frame():
    assert frame_box(FaceBox(10.4, 20.6, 30.2, 40.0, 1.0), 100, 100) == (10, 21, 31, 40)
    assert frame_box(FaceBox(-15.0, -5.0, 40.0, 30.0, 1.0), 100, 80) == (0, 0, 25, 25)
    assert frame_box(FaceBox(90.0, 70.0, 40.0, 30.0, 1.0), 100, 80) == (90, 70, 10, 10)


def test_the_ledger_adds_each_box_once_is_bounded_and_ignores_boxes_from_the_cloud():
    ledger = FaceLedger(size=2)
    res = Result(id="gw1/cam1/4#0", task="t", model="m", label="a", score=0.5, ts=1.0, ts_done=2.0, worker="w")
    ledger.remember("gw1/cam1/4#0", (1, 2, 3, 4), 2, 2)
    ledger.remember("gw1/cam1/4#1", (5, 6, 7, 8), 2, 2)
    ledger.remember("gw1/cam1/5#0", (9, 9, 9, 9), 1, 1)  # the oldest entry goes
    assert len(ledger) == 2 and ledger.annotate(res).box is None
    again = Result(**{**res.__dict__, "id": "gw1/cam1/4#1"})
    out = ledger.annotate(again)
    assert (out.box, out.faces_found, out.faces_answered) == ((5, 6, 7, 8), 2, 2) and len(ledger) == 1
    forged = Result(**{**res.__dict__, "id": "gw1/cam1/4#1", "box": (0, 0, 1, 1), "faces_found": 9,
                       "faces_answered": 9})
    assert ledger.annotate(forged) == again  # only the home knows where its faces are


# the loop -------------------------------------------------------------------------------------------
class FixedDetector(FaceDetector):
    """Boxes chosen by the frame's top-left pixel (pure logic: the ack order does not need a network)."""

    kind = "fixed"

    def __init__(self, boxes_by_mark: dict[int, list[tuple[int, int, int, int]]]):
        super().__init__(0.5, (0.0, 0.0, 1.0, 1.0))
        self.boxes_by_mark = boxes_by_mark

    def _raw(self, rgb):
        boxes = self.boxes_by_mark[int(rgb[0, 0, 0])]
        return np.array(boxes, np.float64).reshape(-1, 4), np.ones(len(boxes))


def test_one_message_per_face_and_the_frame_acknowledged_after_its_last_face():
    """Frame 1 has three faces and the network fails on the second; frame 2 has none; frame 3 one face
    too small to send. Nothing is acknowledged before it is handed on or answered: frame 1 once, after
    its two good faces are sent; frames 2 and 3 with their no_face results."""
    face_boxes = [(20, 30, 100, 100), (160, 40, 80, 80), (250, 150, 50, 50)]
    frames = {}
    for seq, mark in ((1, 0), (2, 1), (3, 2)):
        img = np.zeros((240, 320, 3), np.uint8)
        img[0, 0] = mark
        if seq == 1:
            for k, (x, y, w, h) in enumerate(face_boxes):
                img[y:y + h, x:x + w] = 60 + 60 * k
        frames[seq] = img
    detector = FixedDetector({0: face_boxes, 1: [], 2: [(100, 100, 20, 20)]})
    poison = crop_face(frames[1], FaceBox(*face_boxes[1], score=1.0))
    events: list = []

    class Intake:  # what the loop asks of the MQTT side
        queues = {"image": DeviceQueues()}
        epoch = 1

        def ack(self, items):
            if items:
                events.append(("ack", [i.mid for i in items]))

    class Upstream:
        def send(self, entries, give_up):
            events.append(("send", [feature_entry(s, m, [FEATURES]).id for s, m in entries]))
            return True

    class Model:
        def preprocess(self, raw):
            return image_to_input(raw)

        def extract_batch(self, xs):
            if any(np.array_equal(x, poison) for x in xs):
                raise ZeroDivisionError("division by zero")
            return np.zeros((len(xs), 8), np.float32)

    reports: list = []
    metrics = Metrics()
    stage = _stage(detector, metrics=metrics, publish=lambda topic, body: events.append(("publish", topic, body)))
    hand_on = FeaturesUpstream(Model(), Upstream(), Names().features(MANIFEST["task"], "gw1"))
    loop = ExtractionLoop("image", MANIFEST, GatewaySettings(id="gw1"), Names(), Intake(), metrics,
                          lambda *a: reports.append(a[:2] + a[3:4]), hand_on, faces=stage)
    items = [Inbound("image", "cam1", "privedge/cam1/image",
                     ImageFrame.from_array(frames[s], device="cam1", seq=s, ts=time.time(), codec="png").encode(),
                     10 + s, 1, 1) for s in (1, 2, 3)]
    loop.process(items)

    kinds = [e[0] for e in events]
    assert kinds == ["publish", "ack", "publish", "ack", "send", "ack"], events
    assert events[4] == ("send", ["gw1/cam1/1#0", "gw1/cam1/1#2"])
    assert [e[1] for e in events if e[0] == "ack"] == [[12], [13], [11]]  # frame 1 once, after the send
    no_face = [json.loads(e[2]) for e in events if e[0] == "publish"]
    assert [(b["id"], b["label"], b["faces"]) for b in no_face] == [
        ("gw1/cam1/2", "no_face", {"found": 0, "answered": 0}),
        ("gw1/cam1/3", "no_face", {"found": 1, "answered": 0})]
    assert {e[1] for e in events if e[0] == "publish"} == {"privedge/cam1/result"}
    assert reports == [("cam1", 1, "model failed")]
    res = Result(id="gw1/cam1/1#2", task="glasses", model="m", label="a", score=0.5, ts=1.0, ts_done=2.0,
                 worker="w")
    out = stage.ledger.annotate(res)
    assert (out.box, out.faces_found, out.faces_answered) == ((250, 150, 50, 50), 3, 2)
    assert (metrics.count("faces_found"), metrics.count("faces_skipped_small"),
            metrics.count("frames_without_faces")) == (4, 1, 2)


def test_face_settings_are_checked():
    assert GatewaySettings().face_detector == "blazeface" and GatewaySettings().max_faces == 8
    s = load_settings({}, env={"PRIVEDGE_FACE_DETECTOR": "none", "PRIVEDGE_MAX_FACES": "3"})
    assert (s.face_detector, s.max_faces) == ("none", 3)
    for bad in (dict(face_detector="yolo"), dict(max_faces=0), dict(max_faces=1000), dict(min_face_px=0),
                dict(face_crop_max_px=-1)):
        with pytest.raises(ConfigError):
            GatewaySettings(**bad)


# with mosquitto, redis-server and a worker ------------------------------------------------------------
def _frame(img: np.ndarray, seq: int, codec: str = "jpeg") -> ImageFrame:
    return ImageFrame.from_array(img, device="cam1", seq=seq, ts=time.time(), codec=codec)


@pytest.mark.integration
def test_a_scene_gets_one_result_per_face_and_a_face_free_frame_a_no_face_result(
        make_gateway, mosquitto, redis_server, full_bundles, scene):
    bundle = full_bundles["image"]
    gw = make_gateway(bundles=(str(bundle),), warm_up=False)
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(bundle,), name="w1",
                                   block_ms=50, discover_every_s=0.1)).start()
    lis = Listener(mosquitto.port)
    try:
        lis.publish("privedge/cam1/image", _frame(scene.image, 1).encode())
        lis.publish("privedge/cam1/image", _frame(scenes.face_free(1, seed=77)[0].image, 2).encode())
        topic = "privedge/cam1/result"
        assert lis.wait_for(lambda l: len(l.messages[topic]) >= 4, timeout=60), gw.metrics.snapshot()
        time.sleep(0.3)  # anything more would show now
    finally:
        worker.stop()
    bodies = lis.json(topic)
    assert len(bodies) == 4, bodies
    faces = sorted((b for b in bodies if b["seq"] == 1), key=lambda b: b["face"])
    (none,) = [b for b in bodies if b["seq"] == 2]
    assert [b["id"] for b in faces] == ["gw1/cam1/1#0", "gw1/cam1/1#1", "gw1/cam1/1#2"]
    assert [b["face"] for b in faces] == [0, 1, 2]
    overlap = iou(scene.boxes, np.array([b["box"] for b in faces], dtype=np.float64))
    assert (overlap.max(axis=1) >= 0.5).all() and len(set(overlap.argmax(axis=1))) == 3, overlap
    for b in faces:
        assert b["faces"] == {"found": 3, "answered": 3} and b["worker"] == "w1"
        assert b["label"] in ("no_glasses", "glasses") and b["task"] == "glasses"
    assert (none["id"], none["label"], none["faces"]) == ("gw1/cam1/2", "no_face", {"found": 0, "answered": 0})
    assert "box" not in none and none["worker"] == "gw1"
    # Up went one feature message per face, nothing for the empty frame, and no box.
    r = redis.Redis.from_url(redis_server.url)
    sent = features_in(r, "glasses")
    assert sorted(f.id for f in sent) == [b["id"] for b in faces]
    assert all(set(msgpack.unpackb(f.encode())) == set(msgpack.unpackb(sent[0].encode())) for f in sent)
    m = gw.metrics
    assert (m.count("faces_found"), m.count("frames_without_faces"), m.count("extracted")) == (3, 1, 3)
    assert len(gw.face_ledger) == 0 and gw.failed() is None
    lis.close()


@pytest.mark.integration
def test_hostile_frames_are_rejected_with_a_reason_and_the_gateway_keeps_serving(
        make_gateway, mosquitto, redis_server, scene):
    gw = make_gateway(warm_up=False)
    jpeg, png = _frame(scene.image, 0).data, _frame(scene.image, 0, "png").data

    def wire(seq: int, **change) -> bytes:
        w = _frame(scene.image, seq).to_wire()
        w.update(change)
        return msgpack.packb(w, use_bin_type=True)

    hostile = {
        11: (wire(11, w=5000, h=4000), "too large"),                          # over max_image_pixels
        12: (wire(12, data=jpeg[:len(jpeg) // 2]), "undecodable media"),      # truncated JPEG
        13: (wire(13, codec="png", data=png[:len(png) // 2]), "undecodable media"),  # truncated PNG
        14: (wire(14, data=np.random.default_rng(0).bytes(5000)), "undecodable media"),  # garbled bytes
        15: (wire(15, data=b"\xff\xd8\xff" + np.random.default_rng(1).bytes(5000)), "undecodable media"),
        16: (wire(16, w=640, h=480), "undecodable media"),                    # header contradicts w x h
    }
    lis = Listener(mosquitto.port)
    for payload, _ in hostile.values():
        lis.publish("privedge/cam1/image", payload)
    lis.publish("privedge/cam1/image", np.random.default_rng(2).bytes(3000))  # not msgpack at all
    lis.publish("privedge/cam1/image", _frame(scene.image, 20).encode())      # served after them
    r = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: len(features_in(r, "glasses")) == 3, 60), gw.metrics.snapshot()
    errors = "privedge/gateway/gw1/errors"
    assert lis.wait_for(lambda l: len(l.messages[errors]) >= len(hostile) + 1)
    reports = {e["seq"]: e for e in lis.json(errors)}
    assert {s: reports[s]["reason"] for s in hostile} == {s: reason for s, (_, reason) in hostile.items()}
    assert reports[None]["reason"] == "malformed"
    assert all(reports[s]["detail"] for s in hostile)
    assert sorted(f.id for f in features_in(r, "glasses")) == [f"gw1/cam1/20#{i}" for i in range(3)]
    assert gw.failed() is None and all(loop.thread.is_alive() for loop in gw.loops)
    lis.close()
