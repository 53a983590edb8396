"""Dataset layer: preprocessing, the FSDD / ORL protocols on the real sets, the CSV / folder adapter."""
from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import soundfile
from PIL import Image

from models.data import Protocol, Samples, load_protocol
from models.data.probe import raw_identity, raw_primary
from models.data.samples import split_people, split_per_person
from models.preprocess import IMAGE_SIZE, image_to_input, load_wav, pcm16_to_float

FAST = os.environ.get("PRIVEDGE_FAST") == "1"


# --- preprocess ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(112, 92), (92, 112, 3), (64, 64), (30, 200, 4), (64, 64, 1)])
def test_image_to_input_shape_dtype_range(shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    x = image_to_input(img)
    assert x.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_image_to_input_crops_the_centre_square():
    # A portrait image whose top and bottom strips are white and centre square black: the crop drops the strips.
    img = np.full((112, 92), 255, np.uint8)
    img[10:102] = 0
    assert image_to_input(img).max() == 0.0
    # 64x64 input passes through unchanged (exact /255 scaling).
    sq = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 256
    np.testing.assert_array_equal(image_to_input(sq.astype(np.uint8))[0], sq.astype(np.float32) / 255)


def test_image_to_input_grayscale_matches_pillow():
    rgb = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(image_to_input(rgb)[0], want, atol=1.5 / 255)


def test_image_to_input_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        image_to_input(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        image_to_input(np.zeros((4, 4), np.int32))


def test_pcm16_to_float_mono_and_stereo():
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2")
    np.testing.assert_allclose(pcm16_to_float(pcm.tobytes(), 1), [0, 0.5, -1.0, 32767 / 32768])
    stereo = np.array([16384, 0, -16384, -16384], dtype="<i2").tobytes()
    np.testing.assert_allclose(pcm16_to_float(stereo, 2), [0.25, -0.5])
    with pytest.raises(ValueError, match="whole number"):
        pcm16_to_float(b"\x00\x01\x02", 1)


def test_load_wav_round_trip_and_missing(tmp_path):
    wave = (0.5 * np.sin(np.arange(800) / 5)).astype(np.float32)
    stereo = np.stack([wave, wave], axis=1)
    soundfile.write(tmp_path / "a.wav", stereo, 8000, subtype="PCM_16")
    got, rate = load_wav(tmp_path / "a.wav")
    assert rate == 8000 and got.dtype == np.float32 and got.shape == (800,)
    np.testing.assert_allclose(got, wave, atol=1e-4)
    with pytest.raises(FileNotFoundError):
        load_wav(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not a wave")
    with pytest.raises(ValueError, match="cannot decode"):
        load_wav(tmp_path / "bad.wav")


# --- splitting helpers --------------------------------------------------------------------------

def test_split_people_disjoint_deterministic():
    ids = np.repeat(np.arange(11), 3)
    a, b = split_people(ids, seed=3)
    assert len(a) == 6 and len(b) == 5 and not set(a) & set(b) and set(a) | set(b) == set(range(11))
    a2, _ = split_people(ids, seed=3)
    np.testing.assert_array_equal(a, a2)
    assert any(not np.array_equal(split_people(ids, seed=s)[0], a) for s in range(4, 10))


def test_split_per_person_seventy_thirty():
    ids = np.repeat(np.arange(4), 10)
    train, test = split_per_person(ids, np.array([1, 3]), seed=0)
    assert not set(train) & set(test)
    for person in (1, 3):
        assert np.sum(ids[train] == person) == 7 and np.sum(ids[test] == person) == 3
    assert set(ids[np.concatenate([train, test])]) == {1, 3}


# --- real sets ----------------------------------------------------------------------------------

def _check_samples(s: Samples, modality: str) -> None:
    assert s.modality == modality and len(s) > 0
    assert s.primary.dtype == np.int64 and s.identity.dtype == np.int64
    assert 0 <= s.primary.min() and s.primary.max() < len(s.primary_names)
    assert 0 <= s.identity.min() and s.identity.max() < len(s.identity_names)
    if modality == "image":
        assert s.x.dtype == np.float32 and s.x.shape == (len(s), 1, IMAGE_SIZE, IMAGE_SIZE)
        assert 0.0 <= s.x.min() and s.x.max() <= 1.0 and s.rate is None
    else:
        assert isinstance(s.x, list) and s.rate > 0
        assert all(w.dtype == np.float32 and w.ndim == 1 and np.abs(w).max() <= 1.0 for w in s.x)


def _check_protocol(p: Protocol, modality: str) -> None:
    for split in (p.train, p.test, p.attack_train, p.attack_test):
        _check_samples(split, modality)
    assert p.attack_train.identity_names == p.attack_test.identity_names
    assert set(p.attack_test.identity) <= set(p.attack_train.identity)


@pytest.fixture(scope="module")
def fsdd(data_dir):
    return load_protocol("speech", str(data_dir / "fsdd"))


@pytest.fixture(scope="module")
def orl(data_dir):
    return load_protocol("image", str(data_dir / "orl"))


def test_fsdd_official_split(fsdd, data_dir):
    _check_protocol(fsdd, "speech")
    assert (fsdd.name, fsdd.task, fsdd.train.rate) == ("fsdd", "digit", 8000)
    assert (len(fsdd.train), len(fsdd.test)) == (2700, 300)
    assert fsdd.attack_train is fsdd.train and fsdd.attack_test is fsdd.test
    assert fsdd.train.primary_names == [str(d) for d in range(10)]
    assert len(fsdd.train.identity_names) == 6
    # Every (digit, speaker) has exactly 45 training and 5 test takes; the waves match the files.
    for split, n in ((fsdd.train, 45), (fsdd.test, 5)):
        counts = np.zeros((10, 6), int)
        np.add.at(counts, (split.primary, split.identity), 1)
        assert (counts == n).all()
    # Test takes are exactly 0-4: find each test wave's file among takes 0-4 of its digit and speaker.
    rec = data_dir / "fsdd" / "recordings"
    test_files = {(int(m[1]), m[2], int(m[3])) for f in rec.iterdir() if (m := re.match(r"(\d)_(\w+?)_(\d+)\.wav", f.name))}
    assert {t for _, _, t in test_files} == set(range(50))
    i = 7
    d, spk = fsdd.test.primary[i], fsdd.test.identity_names[fsdd.test.identity[i]]
    candidates = [load_wav(rec / f"{d}_{spk}_{t}.wav")[0] for t in range(5)]
    assert any(len(c) == len(fsdd.test.x[i]) and np.array_equal(c, fsdd.test.x[i]) for c in candidates)
    train_lengths = {(len(w), w[:50].tobytes()) for w in fsdd.train.x}
    assert not any((len(w), w[:50].tobytes()) in train_lengths for w in fsdd.test.x[:60])


def test_fsdd_small_keeps_official_test_takes(data_dir):
    small = load_protocol("speech", str(data_dir / "fsdd"), size="small")
    assert len(small.test) == 300 and len(small.train) == 900


def test_orl_unseen_protocol(orl):
    _check_protocol(orl, "image")
    assert (orl.name, orl.task) == ("orl-unseen", "glasses")
    assert orl.train.primary_names == ["no_glasses", "glasses"]
    names = orl.train.identity_names
    assert len(names) == 40
    number = lambda s: np.array([int(names[i][1:]) for i in s.identity])  # noqa: E731
    assert (number(orl.train) % 2 == 1).all() and len(orl.train) == 200
    assert (number(orl.test) % 2 == 0).all() and len(orl.test) == 200
    assert len(set(orl.attack_train.identity)) == 20 and set(orl.attack_train.identity) == set(orl.test.identity)
    assert (len(orl.attack_train), len(orl.attack_test)) == (140, 60)
    assert pytest.approx(orl.identity_chance, abs=0.01) == 1 / 20
    # Both glasses classes occur on both sides, as glasses.csv says (119 of 400 images with glasses).
    assert orl.train.primary.sum() + orl.test.primary.sum() == 119
    assert 0 < orl.train.primary.mean() < 1 and 0 < orl.test.primary.mean() < 1


def test_orl_attack_images_are_1_to_7(orl, data_dir):
    # The first attack_test image of s2 is s2/8.pgm, and the first attack_train one is s2/1.pgm.
    s2 = orl.attack_train.identity_names.index("s2")
    first_test = orl.attack_test.x[np.flatnonzero(orl.attack_test.identity == s2)[0]]
    first_train = orl.attack_train.x[np.flatnonzero(orl.attack_train.identity == s2)[0]]
    load = lambda k: image_to_input(np.asarray(Image.open(data_dir / "orl" / "s2" / f"{k}.pgm")))  # noqa: E731
    np.testing.assert_array_equal(first_test, load(8))
    np.testing.assert_array_equal(first_train, load(1))


def test_raw_identity_recoverable_on_orl(orl):
    r = raw_identity(orl)
    assert r.n_classes == 20 and r.top1 >= 5 * r.chance


def test_raw_identity_recoverable_on_fsdd(data_dir):
    p = load_protocol("speech", str(data_dir / "fsdd"), size="small" if FAST else "full")
    r = raw_identity(p)
    assert r.n_classes == 6 and r.top1 >= 3 * r.chance
    digit = raw_primary(p)  # the primary task is learnable from the same statistics
    assert digit.n_classes == 10 and digit.top1 >= 5 * digit.chance


# --- CSV and labelled folder --------------------------------------------------------------------

def _write_images(root, n_people=6, per_person=5):
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_people):
        for k in range(per_person):
            img = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
            img[..., 0] = 40 * p
            rel = f"{'yes' if k % 2 else 'no'}/person{p}/{k}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / rel)
            rows.append((rel, "yes" if k % 2 else "no", f"person{p}", img))
    return rows


def test_csv_adapter_round_trip(tmp_path):
    rows = _write_images(tmp_path)
    (tmp_path / "faces.csv").write_text("path,primary,identity\n" + "".join(f"{r},{p},{i}\n" for r, p, i, _ in rows))
    p = load_protocol("image", str(tmp_path / "faces.csv"), seed=1)
    _check_protocol(p, "image")
    assert (p.name, p.task) == ("csv", "faces")
    assert p.train.primary_names == ["no", "yes"] and len(p.train.identity_names) == 6
    assert len(p.train) + len(p.test) == 30 and len(p.test) == len(p.attack_train) + len(p.attack_test)
    assert not set(p.train.identity) & set(p.test.identity)
    assert (len(p.attack_train), len(p.attack_test)) == (12, 3)  # 3 attack people x (4 + 1)
    # Every loaded image is exactly its file through image_to_input, with its labels.
    lookup = {image_to_input(img).tobytes(): (prim, ident) for _, prim, ident, img in rows}
    for s in (p.train, p.test):
        for x, pr, idn in zip(s.x, s.primary, s.identity):
            assert lookup[x.tobytes()] == (s.primary_names[pr], s.identity_names[idn])
    again = load_protocol("image", str(tmp_path / "faces.csv"), seed=1)
    np.testing.assert_array_equal(again.attack_test.x, p.attack_test.x)


def test_folder_adapter_speech(tmp_path):
    for spk in range(4):
        for k in range(4):
            path = tmp_path / f"digit{k % 2}" / f"spk{spk}" / f"{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            rate = 16000 if (spk, k) == (0, 0) else 8000
            soundfile.write(path, 0.1 * np.sin(np.arange(rate // 10) * (spk + 1) / 10), rate)
    p = load_protocol("speech", str(tmp_path))
    _check_protocol(p, "speech")
    assert p.name == "folder" and p.train.rate == 8000
    assert all(abs(len(w) - 800) <= 1 for s in (p.train, p.test) for w in s.x)  # 16 kHz file resampled


@pytest.mark.parametrize("content, error, match", [
    ("file,label,who\na.png,1,x\n", ValueError, "header"),
    ("path,primary,identity\nmissing.png,1,x\n", FileNotFoundError, "missing.png"),
    ("path,primary,identity\nnotes.txt,1,x\n", ValueError, "unsupported"),
    ("path,primary,identity\n", ValueError, "no rows"),
    ("path,primary,identity\na.png,,x\n", ValueError, "empty primary"),
])
def test_csv_adapter_refuses_bad_csv(tmp_path, content, error, match):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(error, match=match):
        load_protocol("image", str(tmp_path / "bad.csv"))


def test_load_protocol_refuses_bad_arguments(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_protocol("image", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="modality"):
        load_protocol("video", "synthetic")
    with pytest.raises(ValueError, match="size"):
        load_protocol("image", "synthetic", size="huge")
    with pytest.raises(ValueError, match="FSDD"):
        load_protocol("image", str(data_dir / "fsdd"))
    with pytest.raises(ValueError, match="ORL"):
        load_protocol("speech", str(data_dir / "orl"))
    rows = _write_images(tmp_path / "imgs", n_people=2, per_person=2)
    assert rows
    with pytest.raises(ValueError, match="not a speech file"):
        load_protocol("speech", str(tmp_path / "imgs"))


def test_samples_subset_and_validation():
    s = Samples("speech", [np.zeros(3, np.float32), np.ones(2, np.float32)], np.array([0, 1]), np.array([1, 0]),
                ["a", "b"], ["p", "q"], 8000)
    sub = s.subset(np.array([False, True]))
    assert len(sub) == 1 and sub.x[0].tolist() == [1, 1] and sub.identity.tolist() == [0]
    with pytest.raises(ValueError, match="rate"):
        Samples("speech", [], np.zeros(0, np.int64), np.zeros(0, np.int64), [], [], None)
    with pytest.raises(ValueError, match="shape"):
        Samples("image", np.zeros((2, 1, 4, 4), np.float32), np.zeros(3, np.int64), np.zeros(2, np.int64),
                [], [], None)


def test_load_wav_reads_file_objects():
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(10), 8000, format="WAV")
    buf.seek(0)
    wave, rate = load_wav(buf)
    assert rate == 8000 and wave.shape == (10,)
