"""``privedge bench`` run tiny: every figure of DESIGN.md is there, finite, and tells the modes apart."""
from __future__ import annotations

import json
import math

import pytest

from bench.cli import main
from bench.pipeline import KEYS, MODES
from tests.conftest import FAST

MODALITIES = ("image",) if FAST else ("image", "speech")


def test_bench_writes_every_figure_and_split_sends_least(tmp_path):
    out = tmp_path / "bench"
    argv = ["--seconds", "1.5", "--window", "32", "--warm-inputs", "4", "--inputs", "8", "--data", "none",
            "--scaling", "off", "--cuts", "off", "--out", str(out)]
    for modality in MODALITIES:
        argv += ["--modality", modality]
    assert main(argv) == 0

    result = json.loads((out / "bench.json").read_text())
    assert result["machine"]["cores"] >= 1 and result["settings"]["seconds"] == 1.5
    for modality in MODALITIES:
        entry = result[modality]
        assert set(entry) == {*MODES, "runtime_ceiling_per_s"}
        assert math.isfinite(entry["runtime_ceiling_per_s"]) and entry["runtime_ceiling_per_s"] > 0
        for mode in MODES:
            figures = entry[mode]
            assert set(figures) == set(KEYS), (modality, mode)
            assert all(math.isfinite(v) for v in figures.values()), (modality, mode, figures)
            for key in ("throughput_per_s", "latency_p50_ms", "gateway_cpu_s_per_inference", "gateway_peak_rss_mb"):
                assert figures[key] > 0, (modality, mode, key)
            assert figures["latency_p99_ms"] >= figures["latency_p50_ms"]
        split, cloud, local = (entry[m]["bytes_up_per_inference"] for m in MODES)
        # Features of 8 numbers in a msgpack envelope vs a whole frame or utterance; nothing at all locally.
        assert 0 < split < 1000 and cloud > 5 * split and local == 0, (split, cloud, local)
        details = result["details"][modality]
        assert details["split"]["upstream_entries"] > 0 and details["local_only"]["upstream_entries"] == 0
    md = (out / "bench.md").read_text()
    for mode in MODES:
        assert f"| {mode}" in md


def test_worker_drain_rate_counts_results_of_a_prefilled_stream(tmp_path, redis_server):
    from bench.loadgen import load_inputs
    from bench.scaling import drain_rate
    from models.bundle import make_untrained_bundle

    make_untrained_bundle(tmp_path / "image", "image")
    inputs = load_inputs("image", 4, None)
    r = drain_rate(redis_server.url, tmp_path / "image", inputs, "split", 1, 1.0, tmp_path / "logs", backlog=3000)
    assert r["results"] > 0 and r["per_s"] > 0 and r["dead_letters"] == 0
    assert r["worker_cpu_s_per_inference"] > 0


def test_pitch_secret_measures_every_home_range_against_three_attackers(tmp_path, capsys):
    from bench import pitch_secret
    from models.bundle import make_untrained_bundle

    bundle = tmp_path / "speech"
    make_untrained_bundle(bundle, "speech", dims=8)
    out = tmp_path / "pitch"
    assert pitch_secret.main(["--bundle", str(bundle), "--out", str(out), "--data", "synthetic",
                              "--size", "small", "--quick", "--homes", "0,1", "6,9"]) == 0
    result = json.loads((out / "pitch_secret.json").read_text())
    assert [r["home"] for r in result["rows"]] == [[0.0, 1.0], [6.0, 9.0]]
    for row in result["rows"]:
        assert 0.0 <= row["primary_accuracy"] <= 1.0
        for who in ("knows_secret", "bundle_range", "wide_range"):
            assert 0.0 <= row[who]["top1"] <= 1.0 and row[who]["attacker"] in ("linear", "mlp", "1-nn")
        assert row["secret_gain_top1"] == pytest.approx(
            row["knows_secret"]["top1"] - max(row["bundle_range"]["top1"], row["wide_range"]["top1"]))
    assert "| ±6-9 |" in (out / "pitch_secret.md").read_text() and "gain of the secret" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pitch_secret.main(["--bundle", str(bundle), "--out", str(out), "--homes", "5,3"])


def _audited(acc, top1, log_rank, eer, nbytes=9):
    return {"primary_accuracy": acc, "identity_top1": top1, "identity_chance": 0.2, "log_rank": log_rank,
            "verification_eer": eer, "feature_bytes": nbytes}


def test_privacy_sweep_checks_each_target_and_summarises_repeated_audits():
    from bench.privacy_sweep import repeat_table, targets

    assert targets(_audited(0.95, 0.30, 0.95, 0.45), uncut=0.955) == {
        "accuracy": True, "identity_top1": True, "log_rank": True, "eer": True, "bytes": True}
    assert targets(_audited(0.94, 0.31, 0.89, 0.39, 17), uncut=0.955) == {
        "accuracy": False, "identity_top1": False, "log_rank": False, "eer": False, "bytes": False}
    assert targets({**_audited(None, 0.5, 0.5, None)}, uncut=None)["accuracy"] is None
    # two audits of one bundle: the second misses the identity target, so only four are met in both
    runs = {"fsdd": {"b": [_audited(0.96, 0.25, 0.95, 0.5), _audited(0.98, 0.35, 1.05, 0.5)]}}
    row = repeat_table(runs, {"fsdd": 0.97}).splitlines()[-1]
    assert "| fsdd | b | 2 | 0.970 [0.960, 0.980] | 0.300 [0.250, 0.350] | 1.000 [0.950, 1.050] |" in row
    assert row.endswith("| accuracy, log_rank, eer, bytes |")
    assert repeat_table({"fsdd": {"b": runs["fsdd"]["b"][:1]}}, {"fsdd": 0.96}).endswith("| all five |")


def test_drill_counts_are_read_back_from_the_lines_the_drills_print():
    from bench.drills import parse_counts

    text = ("noise\n[worker SIGKILL] inputs=500 results=500 missing=0 dropped={'cam0': 3, 'cam1': 4} note=ok\n"
            "[x] inputs=2\n")
    assert parse_counts(text) == [("worker SIGKILL", {"inputs": 500, "results": 500, "missing": 0,
                                                      "dropped": {"cam0": 3, "cam1": 4}, "note": "ok"}),
                                  ("x", {"inputs": 2})]


def _trained(embedding, cut, acc, nbytes, uncut=0.85):
    return {"embedding": embedding, "cut": cut, "dims": 8 if embedding == "advanced" else None,
            "primary_accuracy": acc, "feature_bytes": nbytes, "extractor_macs": 10_000_000, "epochs": [40, 15, 10],
            "seconds": 1.0, "n_train": 640, "n_test": 640, "training": {"uncut_accuracy": uncut},
            "face_crops": {"frames": 1280, "cropped": 1279, "missed": 1}}


def test_paper_table_measures_each_cell_against_the_uncut_network():
    from bench.paper_table import markdown, rows_of

    seen = {"ssim_own": 0.6, "ssim_others": 0.2, "own_beats_other": 1.0, "n": 64}
    uncut, rows = rows_of([{**_trained("simple", "block2", 0.85, 32768), "whitebox": seen},
                           _trained("advanced", "block3", 0.8395, 32), _trained("siamese", "block4", 0.8405, 8192)])
    assert uncut["accuracy"] == 0.85 and uncut["n_test"] == 640
    assert [r["points_vs_uncut"] for r in rows] == [0.0, -1.05, -0.95]
    assert [r["within_1_point"] for r in rows] == [True, False, True]
    res = {"machine": {"cores": 2, "cpu_model": "x", "python": "3", "torch": "t", "onnxruntime": "o",
                       "load_average_at_start": [1.0, 1.0, 1.0], "date_utc": "now"},
           "settings": {"size": "small", "seed": 0}, "detector": "blazeface", "detector_params": {},
           "command": "python -m bench.paper_table", "uncut": uncut, "rows": rows}
    md = markdown(res)
    assert "| uncut | — | — | 0.8500 |" in md and "| advanced | block3 | 8 | 0.8395 | -1.1 | 32 |" in md
    assert "Run size: small" in md and "1279 of 1280 frames" in md
    assert "2 of 3 (simple block2, siamese block4)" in md
    assert "| simple | block2 | 32,768 | 0.600 | 0.200 | 1.000 |" in md and "on 64 crops" in md
    assert "| advanced | block3 | 32 | 0." not in md.split("White-box")[1]    # only rows that ran it
