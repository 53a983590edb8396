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
        stages = details["split"]["gateway_stages_ms_per_inference"]  # where the gateway's time went
        assert {"decode", "preprocess", "extract", "encode", "publish"} <= set(stages), stages
        assert all(v >= 0 for v in stages.values()) and stages["extract"] > 0
        assert "extract" not in details["cloud_only"]["gateway_stages_ms_per_inference"]
        if modality == "speech":
            assert 0 < details["split"]["gateway_real_time_factor"] < 1
    md = (out / "bench.md").read_text()
    assert "Where the gateway's time goes (image" in md
    assert ("real-time factor per core" in md) == ("speech" in MODALITIES)
    for mode in MODES:
        assert f"| {mode}" in md


def test_bench_scenes_input_reports_faces_and_frames_answered_per_second(tmp_path):
    out = tmp_path / "bench"
    assert main(["--modality", "scenes", "--seconds", "1.5", "--window", "16", "--warm-inputs", "2", "--inputs",
                 "4", "--data", "none", "--scaling", "off", "--cuts", "off", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["settings"]["sources"]["scenes"].startswith("scenes 640x480, 1 face each")
    entry, details = result["scenes"], result["details"]["scenes"]
    assert set(entry) == {"split", "runtime_ceiling_per_s"}  # the baselines have no face stage
    figures = entry["split"]
    assert set(figures) == set(KEYS) and all(math.isfinite(v) and v >= 0 for v in figures.values()), figures
    assert figures["throughput_per_s"] > 0 and figures["latency_p99_ms"] >= figures["latency_p50_ms"] > 0
    # What went up are the faces' features, not the frames (a 640x480 JPEG is tens of kilobytes).
    assert 0 < figures["bytes_up_per_inference"] < 1000
    split = details["split"]
    assert 0 < split["inputs_per_s"] and split["saturation_inputs_answered"] <= split["saturation_results"]
    face_path = details["runtime_ceiling"]["face_path"]
    assert entry["runtime_ceiling_per_s"] == face_path["fps_per_core"] > 0 and face_path["frames"] == 4
    md = (out / "bench.md").read_text()
    assert "## scenes" in md and "Frames answered per second at saturation: split " in md


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


def test_cut_table_puts_split_local_and_cloud_side_by_side():
    from bench.cuts import cuts_markdown

    row = {"throughput_per_s": 100.0, "gateway_cpu_s_per_inference": 0.001, "gateway_peak_rss_mb": 120.0,
           "bytes_up_per_inference": 40.0}
    cuts = {"image": {"block1": {**row, "extractor_macs": 720_000, "worker_cpu_s_per_inference": 0.0005},
                      "local_only": {**row, "bytes_up_per_inference": 0.0, "worker_cpu_s_per_inference": None},
                      "cloud_only": {**row, "bytes_up_per_inference": 3844.0, "worker_cpu_s_per_inference": 0.002}}}
    rows = [line for line in cuts_markdown(cuts) if line.startswith("| image")]
    assert [r.split(" | ")[1] for r in rows] == ["split", "local_only", "cloud_only"]
    assert "| 0.72 |" in rows[0] and "| 0.50 |" in rows[0]  # MMACs, worker CPU ms
    assert "| - |" in rows[1] and "| 2.00 |" in rows[2] and rows[2].endswith("| 3844 |")


def test_scene_speed_times_every_stage_of_the_face_path_per_frame(tmp_path, capsys):
    from bench import scene_speed

    out = tmp_path / "scenes"
    assert scene_speed.main(["--out", str(out), "--frames", "2", "--repeats", "1", "--faces", "synthetic",
                             "--size", "640x480"]) == 0
    result = json.loads((out / "scene-speed.json").read_text())
    assert list(result["runs"]) == ["640x480, 0 faces", "640x480, 1 face", "640x480, 4 faces"]
    assert result["settings"]["runtime"] == "onnx" and result["settings"]["detector"] == "blazeface"
    for key, r in result["runs"].items():
        assert r["frames"] == 2 and r["passes"] == 1
        assert set(r["ms_by_stage"]) == set(scene_speed.STAGES)
        assert r["ms_by_stage"]["decode"] > 0 and r["ms_by_stage"]["detect"] > 0, (key, r)
        assert r["ms_per_frame"] == pytest.approx(sum(r["ms_by_stage"].values()))
        assert r["fps_per_core"] == pytest.approx(1e3 / r["ms_per_frame"])
        assert sum(r["share_by_stage"].values()) == pytest.approx(1.0)
        assert 0 <= r["faces_sent_per_frame"] <= 8  # the gateway's max_faces
    assert [r["true_faces_per_frame"] for r in result["runs"].values()] == [0, 1, 4]
    four = result["runs"]["640x480, 4 faces"]
    # Faces were found and sent: the extractor ran on them.
    assert four["faces_sent_per_frame"] >= 1 and four["ms_by_stage"]["extract"] > 0
    assert result["target"]["measured"] == result["runs"]["640x480, 1 face"]["fps_per_core"]
    md = (out / "scene-speed.md").read_text()
    assert "| 640x480, 4 faces |" in md and "frames/s per core" in md and "detect %" in md


def test_worker_scaling_sizes_each_phase_from_a_measured_rate(tmp_path, redis_server):
    """A probe's single-worker rate sizes the backlog of every phase, so none runs out, and the output says
    what it was sized from."""
    from bench.loadgen import load_inputs
    from bench.scaling import MARGIN, measure_scaling, scaling_markdown, sized_backlog
    from models.bundle import make_untrained_bundle

    assert sized_backlog(1000.0, 2, 10.0, "split") == math.ceil(MARGIN * 2 * 1000 * (10 + 1 + 1)) >= 2 * 1000 * 10
    assert sized_backlog(1e9, 2, 10.0, "cloud_only") == 100_000  # capped: Redis memory
    make_untrained_bundle(tmp_path / "image", "image")
    r = measure_scaling(redis_server.url, tmp_path / "image", load_inputs("image", 4, None), "split", 1.0,
                        tmp_path / "logs")
    rate = r["probe"]["per_s"]
    assert rate > 0 and not r["probe"]["ran_out"]
    for k in (1, 2):
        phase = r[str(k)]
        assert phase["backlog"] == sized_backlog(phase["sized_from_per_s"], k, 1.0, "split")
        assert phase["sized_from_per_s"] >= rate and phase["backlog"] >= k * rate * 1.0
        assert phase["results"] > 0 and phase["dead_letters"] == 0
        assert not phase["ran_out"] and phase["left_at_end"] > 64 * k, phase
    assert r["sizing"].startswith(f"backlog sized from measured rate {rate:.0f}/s for 1 s per phase")
    md = "\n".join(scaling_markdown({"image": {"split": r}}))
    assert r["sizing"] in md and "ran out" not in md.split("\n\n")[1]


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
