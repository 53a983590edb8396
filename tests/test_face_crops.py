"""Data sets of whole frames cut by the face detector: ORL, LFW, a user's folder; misses counted; cached."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from models.data import load_protocol
from models.data.face_crops import detector_crops
from models.faces import crop_face, make_detector
from models.preprocess import load_image
from tests.conftest import DATA


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def mini_lfw(tmp_path):
    """An LFW-shaped folder: 6 real LFW people x 3 photos (gender.csv too) and one face-free frame."""
    root = tmp_path / "lfw"
    people = sorted(p for p in (DATA / "lfw" / "images").iterdir() if len(list(p.glob("*.jpg"))) >= 3)[:6]
    rows = []
    genders = {r["image"]: r["gender"] for r in csv.DictReader(open(DATA / "lfw" / "gender.csv"))}
    for person in people:
        (root / "images" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:3]:
            shutil.copy(photo, root / "images" / person.name / photo.name)
            rows.append((photo.name, person.name, genders[photo.name]))
    # a frame of a plain wall, labelled like the first person's: the detector finds nobody in it
    blank = root / "images" / people[0].name / f"{people[0].name}_9999.jpg"
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(blank)
    rows.append((blank.name, people[0].name, genders[sorted(people[0].glob("*.jpg"))[0].name]))
    with open(root / "gender.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "person", "gender"])
        w.writerows(rows)
    return root, blank


def test_detector_crops_are_the_gateways_crop_and_misses_are_named(mini_lfw, cache):
    root, blank = mini_lfw
    paths = sorted((root / "images").glob("*/*.jpg"))
    x, found, report = detector_crops(paths, "blazeface")
    assert report.frames == len(paths) == 19 and not found[paths.index(blank)]
    assert report.missed == 19 - int(found.sum()) >= 1 and str(blank) in report.no_face
    assert x.shape == (int(found.sum()), 1, 64, 64) and report.cropped == len(x)
    # each crop is crop_face of the largest face the detector finds in the whole frame
    detector = make_detector("blazeface")
    first = load_image(paths[0])
    np.testing.assert_allclose(x[0], crop_face(first, detector.detect(first)[0]), atol=1e-6)
    # and not the whole-frame input: the crop is the face, not the 250x250 photo with its background
    from models.preprocess import image_to_input
    assert np.abs(x[0] - image_to_input(first)).mean() > 0.05


def test_crops_are_cached_by_detector_and_files(mini_lfw, cache, monkeypatch):
    root, _ = mini_lfw
    paths = sorted((root / "images").glob("*/*.jpg"))
    x, found, first = detector_crops(paths, "blazeface")
    assert len(list(cache.glob("face-crops-*.npz"))) == 1 and not first.cached

    def no_detector(*a, **k):
        raise AssertionError("the cache should have answered")
    monkeypatch.setattr("models.faces.make_detector", no_detector)
    x2, found2, report = detector_crops(paths, "blazeface")
    np.testing.assert_array_equal(x, x2)
    assert (found == found2).all() and report.cropped == len(x) and report.cached
    with pytest.raises(AssertionError, match="cache"):  # other parameters: another entry
        detector_crops(paths, "blazeface", {"threshold": 0.9})


def test_lfw_protocol_with_and_without_detector(mini_lfw, cache):
    root, blank = mini_lfw
    plain = load_protocol("image", str(root), seed=0)
    assert plain.name == "lfw-unseen" and plain.task == "gender" and plain.crop is None
    assert sum(len(s) for s in (plain.train, plain.test)) == 19
    det = load_protocol("image", str(root), seed=0, detector="blazeface")
    assert det.name == "lfw-unseen-detected" and det.crop["frames"] == 19
    assert det.crop["missed"] >= 1 and str(blank) in det.crop["no_face"]
    assert len(det.train) + len(det.test) == det.crop["cropped"]
    assert set(det.train.identity) & set(det.test.identity) == set()  # unseen people
    assert det.train.primary_names == ["female", "male"]


def test_orl_on_detector_crops_keeps_the_protocol(cache):
    own = load_protocol("image", str(DATA / "orl"))
    det = load_protocol("image", str(DATA / "orl"), detector="blazeface")
    assert det.name == "orl-unseen-detected" and det.task == own.task
    assert det.crop["frames"] == 400 and len(det.train) + len(det.test) == det.crop["cropped"] > 380
    for split in ("train", "test", "attack_train", "attack_test"):
        a, b = getattr(own, split), getattr(det, split)
        assert set(b.identity) <= set(a.identity) and len(b) >= len(a) - det.crop["missed"]


def test_user_folder_on_detector_crops_counts_frames_without_a_face(tmp_path, cache):
    lfw = sorted((DATA / "lfw" / "images").iterdir())
    for i, person in enumerate(lfw[:4]):
        folder = tmp_path / "set" / ("a" if i % 2 else "b") / person.name
        folder.mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:3]:
            shutil.copy(photo, folder / photo.name)
    Image.fromarray(np.zeros((120, 160, 3), np.uint8)).save(tmp_path / "set" / "a" / lfw[1].name / "dark.png")
    p = load_protocol("image", str(tmp_path / "set"), detector="blazeface")
    assert p.name == "folder-detected" and p.crop["frames"] == 13 and p.crop["missed"] >= 1
    assert any(n.endswith("dark.png") for n in p.crop["no_face"])
    with pytest.raises(ValueError, match="real image frames"):
        load_protocol("image", "synthetic", detector="blazeface")
    with pytest.raises(ValueError, match="real image frames"):
        load_protocol("speech", str(DATA / "fsdd"), detector="blazeface")


def test_train_and_audit_clis_pass_the_detector_on(monkeypatch, tmp_path):
    from models import train_cli as train
    from models.audit import cli as audit_cli
    seen = {}

    def fake_protocol(*a, **k):
        seen.update(k)
        raise FileNotFoundError("stop here")
    monkeypatch.setattr("models.data.load_protocol", fake_protocol)
    monkeypatch.setattr("models.audit.pipeline.load_protocol", fake_protocol)
    args = ["--modality", "image", "--data", "x", "--out", str(tmp_path / "b"), "--no-progress"]
    assert train.main([*args, "--crop-faces"]) == 2 and seen["detector"] == "blazeface"
    assert train.main([*args, "--crop-faces", "haar"]) == 2 and seen["detector"] == "haar"
    assert train.main(args) == 2 and seen["detector"] is None
    assert audit_cli.main(["--raw", "--modality", "image", "--data", "x", "--out", str(tmp_path / "a"),
                           "--crop-faces"]) == 1 and seen["detector"] == "blazeface"
    assert json.dumps(seen)  # plain values


def test_audit_report_says_how_many_frames_the_detector_left_out():
    from models.audit.measures import LabelFloor
    from models.audit.pipeline import AuditRun, AuditSettings
    from models.audit.report import metrics, report_markdown

    crop = {"detector": "blazeface", "frames": 400, "cropped": 393, "several_faces": 0, "no_face": [], "missed": 7,
            "cached": False}
    run = AuditRun(protocol="orl-unseen-detected", task="glasses", modality="image", data="orl",
                   settings=AuditSettings(), originals=np.zeros((0, 1, 64, 64)), entries=[],
                   floor=LabelFloor(0.1, 0.7, 0.35), crop=crop)
    assert "393 of 400 frames cropped, 7 with no face found left out" in report_markdown(run)
    plain = AuditRun(protocol="orl-unseen", task="glasses", modality="image", data="orl", settings=AuditSettings(),
                     originals=np.zeros((0, 1, 64, 64)), entries=[], floor=LabelFloor(0.1, 0.7, 0.35))
    assert "face detector crops" not in report_markdown(plain) and metrics(plain) == {}
