"""The raw-input attacker at full strength: a trained face recognition network on LFW's whole photographs
(models.audit.face_recognition), and its place in ``privedge audit``."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from models.audit.cli import main as audit_main
from models.audit.face_recognition import NAME, face_descriptors
from models.audit.pipeline import AuditSettings, run_audit
from models.data import load_protocol
from models.data.lfw import lfw_entries


@pytest.fixture(scope="module")
def lfw(data_dir) -> Path:
    return data_dir / "lfw"


def _few_people(root: Path, people: int, each: int) -> tuple[list[str], np.ndarray]:
    by_person = defaultdict(list)
    for path, _, person in lfw_entries(root):
        by_person[person].append(str(path))
    picked = sorted(p for p, paths in by_person.items() if len(paths) >= each)[:people]
    paths = [path for p in picked for path in by_person[p][:each]]
    return paths, np.repeat(np.arange(len(picked)), each)


def test_the_network_names_people_it_is_shown_from_their_other_photographs(lfw, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path))
    paths, who = _few_people(lfw, people=6, each=5)
    found = face_descriptors(paths)
    assert found.values.shape == (30, 128) and found.values.dtype == np.float32
    d = np.linalg.norm(found.values[:, None] - found.values[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    leave_one_out = float((who[d.argmin(axis=1)] == who).mean())
    same = who[:, None] == who[None]
    assert leave_one_out >= 0.9, leave_one_out
    assert d[same & np.isfinite(d)].mean() < 0.6 < d[~same].mean()      # dlib's own same-person threshold
    again = face_descriptors(paths)                                         # from the cache, the same numbers
    np.testing.assert_array_equal(again.values, found.values)
    assert len(list(tmp_path.glob("face-descriptors-*.npz"))) == 1


def test_lfw_samples_name_the_photograph_of_every_input_in_every_split(lfw):
    p = load_protocol("image", str(lfw), size="small")
    for split in (p.train, p.test, p.attack_train, p.attack_test):
        assert len(split.sources) == len(split)
        folders = Counter((Path(s).parent.name, int(i)) for s, i in zip(split.sources, split.identity))
        assert all(split.identity_names[i] == folder for folder, i in folders)


def test_the_baseline_is_refused_for_a_set_that_does_not_name_its_photographs(capsys):
    with pytest.raises(ValueError, match="does not name its files"):
        run_audit([], "synthetic", modality="image", settings=AuditSettings.quick(size="small", measure_cost=False,
                                                                                  inversion=False),
                  face_recognition=True)
    assert audit_main(["--face-recognition", "--modality", "speech", "--data", "synthetic", "--out", "x"]) == 2
    assert "for images" in capsys.readouterr().err


def test_on_lfw_it_is_the_near_perfect_attacker_the_raw_crops_are_not(lfw, tmp_path):
    out = tmp_path / "audit"
    assert audit_main(["--raw", "--face-recognition", "--data", str(lfw), "--size", "small", "--quick",
                       "--no-cost", "--no-inversion", "--out", str(out)]) == 0
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    net, crops = metrics[NAME], metrics["raw input"]
    assert net["dims"] == 128 and net["n_identities"] == crops["n_identities"] == 64
    assert net["identity_top1"] >= 0.9 > crops["identity_top1"]
    assert net["verification_eer"] < 0.1 < crops["verification_eer"]
    assert "dlib_face_recognition_resnet_model_v1" in net["model"]
    assert NAME in (out / "report.md").read_text()
