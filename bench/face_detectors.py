"""Which face detector privedge ships: recall, precision, false faces and CPU per frame on real scenes.

For every candidate backend of :mod:`models.faces`:

1. **tune** on a tuning split (composites of the tuning people, and face-free frames of another seed):
   each run-time configuration (scale factor, upsampling, tiling...) is run once at a low threshold, its
   ``box_fit`` is fitted (median centre shift and scale from its boxes to the true ones), and the score
   threshold is swept; the choice is the most recall with precision >= 0.95 and at most 1 false face per
   100 face-free frames, the cheaper configuration on a tie (the best F1 when none qualifies);
2. **test** the tuned detector on a disjoint split: composites of other people and seeds (recall and
   precision at IoU 0.5), face-free frames (false faces per 100 frames), and LFW photographs (share whose
   centre face is found at IoU 0.5);
3. **time** it on one thread in process CPU seconds (``time.process_time``): per frame at 640x480 and
   1280x720 with one face, each frame the median of ``--repeats`` runs, and the whole face stage at
   640x480 (detection, :func:`models.faces.crop_face` and the default image extractor on ONNX Runtime).

    python -m bench.face_detectors --out DIR [--frames 600] [--lfw 1000] [--only KIND ...]

Writes ``DIR/face_detectors.json`` and ``DIR/face_detectors.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import scenes
from bench.report import header, machine, setup_lines, table_head
from models import faces

TARGETS = {"recall": 0.95, "precision": 0.95, "false_per_100": 1.0, "lfw_found": 0.98, "stage_fps_640": 30.0}
IOU = 0.5
CANDIDATES: dict[str, tuple[str, list[dict], list[float]]] = {
    # name: (kind, run-time configurations to tune over, score thresholds to sweep)
    "haar_default": ("haar", [{"cascade": "haarcascade_frontalface_default.xml", "scale_factor": sf,
                               "min_size": 40} for sf in (1.1, 1.2)], [float(t) for t in range(1, 41)]),
    "haar_alt2": ("haar", [{"cascade": "haarcascade_frontalface_alt2.xml", "scale_factor": sf,
                            "min_size": 40} for sf in (1.1, 1.2)], [float(t) for t in range(1, 41)]),
    "dlib_hog": ("dlib_hog", [{"upsample": u} for u in (0, 1)], [t / 10 for t in range(-5, 21)]),
    "blazeface_short": ("blazeface", [{"model": "short", "tiles": t, "verify": v} for t in (1, 2) for v in (0.0, 2.0)],
                        [t / 100 for t in range(30, 100, 2)]),
    "blazeface_full": ("blazeface", [{"model": "full", "tiles": t, "verify": v} for t in (1, 2) for v in (0.0, 2.0)],
                       [t / 100 for t in range(30, 100, 2)]),
    "mtcnn": ("mtcnn", [{"min_face": 40}], [0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
}
LOW = {"haar": 1.0, "dlib_hog": -0.5, "blazeface": 0.3, "mtcnn": 0.7}  # the threshold tuning runs at


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (n, m) of boxes a (n, 4) and b (m, 4), both x, y, w, h."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter)


def match(det: np.ndarray, scores: np.ndarray, truth: np.ndarray, thr: float = IOU) -> list[tuple[int, int]]:
    """Greedy matching, best score first: (detection index, true box index) pairs with IoU >= thr."""
    if not len(det) or not len(truth):
        return []
    m = iou(det, truth)
    used: set[int] = set()
    pairs = []
    for i in np.argsort(-scores):
        free = [j for j in np.argsort(-m[i]) if j not in used and m[i, j] >= thr]
        if free:
            used.add(int(free[0]))
            pairs.append((int(i), int(free[0])))
    return pairs


def run_raw(det: faces.FaceDetector, frames: list[scenes.Scene]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each frame's detections as (boxes (n, 4), scores (n,)), in the detector's own fit and threshold."""
    out = []
    for s in frames:
        found = det.detect(s.image)
        out.append((np.array([(f.x, f.y, f.w, f.h) for f in found]).reshape(-1, 4),
                    np.array([f.score for f in found])))
    return out


def fit_boxes(raw, frames) -> tuple[float, float, float, float]:
    """``box_fit`` (dx, dy, sx, sy): median map from raw boxes to the true boxes they overlap (IoU >= 0.3)."""
    rows = []
    for (b, s), sc in zip(raw, frames):
        for i, j in match(b, s, sc.boxes, 0.3):
            (x, y, w, h), (tx, ty, tw, th) = b[i], sc.boxes[j]
            rows.append(((tx + tw / 2 - x - w / 2) / w, (ty + th / 2 - y - h / 2) / h, tw / w, th / h))
    if not rows:
        return (0.0, 0.0, 1.0, 1.0)
    return tuple(round(float(v), 3) for v in np.median(np.array(rows), axis=0))


def refit(raw, box_fit, thr):
    """Raw detections with ``box_fit`` applied and scores below ``thr`` dropped."""
    out = []
    for b, s in raw:
        keep = s >= thr
        out.append((faces._fit(b[keep], box_fit), s[keep]))
    return out


def score(dets, frames) -> dict:
    """Recall, precision (IoU 0.5) and false faces per 100 frames of ``dets`` against ``frames``."""
    tp = n_det = n_true = 0
    for (b, s), sc in zip(dets, frames):
        tp += len(match(b, s, sc.boxes))
        n_det += len(b)
        n_true += len(sc.boxes)
    return {"recall": tp / n_true if n_true else float("nan"), "precision": tp / n_det if n_det else 1.0,
            "false_per_100": 100.0 * (n_det - tp) / len(frames), "true": n_true, "found": n_det}


def ms_per_frame(fn, frames: list, repeats: int) -> float:
    """Median over frames of the median of ``repeats`` runs of ``fn(frame)``, in CPU ms (process time)."""
    per = []
    for f in frames:
        fn(f)  # warm
        runs = []
        for _ in range(repeats):
            t0 = time.process_time()
            fn(f)
            runs.append(time.process_time() - t0)
        per.append(statistics.median(runs))
    return 1e3 * statistics.median(per)


def tune(name: str, tune_faces, tune_free, log) -> dict:
    """Best (configuration, threshold, box_fit) of candidate ``name`` on the tuning split."""
    kind, configs, thresholds = CANDIDATES[name]
    best = None
    for cfg in configs:
        # box_fit identity: the fit below maps the detector's own raw boxes (make_detector would otherwise
        # lay the shipped default's fit over the default kind's boxes, and the fit would be relative to it)
        det = faces.make_detector(kind, **cfg, threshold=LOW[kind], box_fit=(0.0, 0.0, 1.0, 1.0))
        t0 = time.process_time()
        raw_f = run_raw(det, tune_faces)
        cost = (time.process_time() - t0) / len(tune_faces)
        raw_0 = run_raw(det, tune_free)
        fit = fit_boxes(raw_f, tune_faces)
        for thr in thresholds:
            a = score(refit(raw_f, fit, thr), tune_faces)
            fp = score(refit(raw_0, fit, thr), tune_free)["false_per_100"]
            ok = a["precision"] >= TARGETS["precision"] and fp <= TARGETS["false_per_100"]
            f1 = 2 * a["recall"] * a["precision"] / max(a["recall"] + a["precision"], 1e-9)
            key = (ok, a["recall"] if ok else f1 - fp / 100, -cost)
            if best is None or key > best["key"]:
                best = {"key": key, "params": {**cfg, "threshold": thr, "box_fit": fit}, "tune": {
                    **a, "false_per_100_free": fp, "qualifies": ok, "cpu_ms_per_frame": 1e3 * cost}}
        log(f"  {name} {cfg}: box_fit {fit}, best so far {best['params']} {best['tune']}")
    return {"params": best["params"], "tune": best["tune"]}


def extractor_step():
    """The default image extractor (untrained, same compute) on ONNX Runtime, one thread: x (1, 1, 64, 64)."""
    from models.nets import DEFAULT_CUT, build_net, image_config, split
    from models.onnx_export import export_module
    from models.onnx_runtime import make_session

    ext, _ = split(build_net(image_config()), DEFAULT_CUT)
    path = Path(tempfile.mkdtemp(prefix="privedge-faces-")) / "extractor.onnx"
    export_module(ext, (1, 64, 64), path)
    sess = make_session(path, 1)
    return lambda x: sess.run(None, {"x": x[None]})


def evaluate(name: str, params: dict, test_faces, test_free, lfw, timing: dict, extract, repeats: int) -> dict:
    """Test figures and CPU times of the tuned candidate."""
    kind = CANDIDATES[name][0]
    det = faces.make_detector(kind, **params)
    raw = run_raw(det, test_faces)
    res = {"composites": score(raw, test_faces)}
    for w, h in scenes.SIZES:
        idx = [i for i, s in enumerate(test_faces) if s.image.shape[1] == w]
        res[f"recall_{w}x{h}"] = score([raw[i] for i in idx], [test_faces[i] for i in idx])["recall"]
    res["face_free"] = score(run_raw(det, test_free), test_free)
    found = [len(match(b, s, sc.boxes)) for (b, s), sc in zip(run_raw(det, lfw), lfw)]
    res["lfw_found"] = sum(found) / len(lfw)
    for size, frames in timing.items():
        res[f"cpu_ms_{size}"] = ms_per_frame(det.detect, [s.image for s in frames], repeats)

    def stage(s):
        for box in det.detect(s.image)[:1]:
            extract(faces.crop_face(s.image, box))
    res["stage_ms_640x480"] = ms_per_frame(stage, timing["640x480"], repeats)
    res["stage_fps_640"] = 1e3 / res["stage_ms_640x480"]
    c, f = res["composites"], res["face_free"]
    res["meets"] = {"recall": c["recall"] >= TARGETS["recall"], "precision": c["precision"] >= TARGETS["precision"],
                    "false_per_100": f["false_per_100"] <= TARGETS["false_per_100"],
                    "lfw_found": res["lfw_found"] >= TARGETS["lfw_found"],
                    "stage_fps_640": res["stage_fps_640"] >= TARGETS["stage_fps_640"]}
    return res


def markdown(result: dict) -> str:
    """The report: machine, settings, one row per candidate (test split), the tuned parameters."""
    lines = header("privedge face detectors", result["machine"], result["settings"])
    lines += table_head("detector", "recall", "precision", "recall 640", "recall 1280", "false / 100 free",
                        "LFW centre found", "ms 640x480", "ms 1280x720", "stage fps 640 (1 face)", "meets all")
    for name, r in result["candidates"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |" + " |" * 9)
            continue
        t = r["test"]
        lines.append(f"| {name} | {t['composites']['recall']:.3f} | {t['composites']['precision']:.3f} | "
                     f"{t['recall_640x480']:.3f} | {t['recall_1280x720']:.3f} | "
                     f"{t['face_free']['false_per_100']:.1f} | {t['lfw_found']:.3f} | {t['cpu_ms_640x480']:.1f} | "
                     f"{t['cpu_ms_1280x720']:.1f} | {t['stage_fps_640']:.1f} | "
                     f"{'yes' if all(t['meets'].values()) else 'no'} |")
    lines += ["", "Tuned parameters (tuning split) and the tuning figures:", ""]
    for name, r in result["candidates"].items():
        if "params" in r:
            lines.append(f"- {name}: `{json.dumps(r['params'])}`; tuning {json.dumps(r['tune'])}")
    lines += ["", f"Targets: {json.dumps(TARGETS)}; load average at end "
              f"{', '.join(f'{x:.2f}' for x in result['load_average_at_end'])}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.face_detectors", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for face_detectors.json and face_detectors.md")
    p.add_argument("--frames", type=int, default=600, help="test composites with 1-4 faces (default 600)")
    p.add_argument("--free", type=int, default=300, help="test face-free frames (default 300)")
    p.add_argument("--lfw", type=int, default=1000, help="LFW photographs sampled (0: all; default 1000)")
    p.add_argument("--tune-frames", type=int, default=120, help="tuning composites (default 120)")
    # 400: with 100 the tuning cannot tell 1 false face per 100 frames from 0 (the target's resolution)
    p.add_argument("--tune-free", type=int, default=400, help="tuning face-free frames (default 400)")
    p.add_argument("--timing-frames", type=int, default=15, help="one-face frames timed per size (default 15)")
    p.add_argument("--repeats", type=int, default=5, help="runs per timed frame, median taken (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", choices=sorted(CANDIDATES), help="candidates to run (default all)")
    args = p.parse_args(argv)

    import threadpoolctl

    threadpoolctl.threadpool_limits(1)
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = args.seed
    settings = {**{k: v for k, v in vars(args).items() if k != "out"}, "iou": IOU, "threads": 1,
                "face_side_px": scenes.FACE_SIDE, "backgrounds": scenes.BACKGROUNDS}
    result = {"machine": machine(), "settings": settings, "candidates": {}}
    print(setup_lines(result["machine"], settings), flush=True)
    tune_faces = scenes.composites(args.tune_frames, s, "tune")
    tune_free = scenes.face_free(args.tune_free, s + 1)
    test_faces = scenes.composites(args.frames, s + 2, "test")
    test_free = scenes.face_free(args.free, s + 3)
    lfw = scenes.lfw_frames(args.lfw or None, s + 4)
    rng = np.random.default_rng([s, 5])
    timing = {f"{w}x{h}": [scenes.composite(rng, (w, h), 1, "test") for _ in range(args.timing_frames)]
              for w, h in scenes.SIZES}
    extract = extractor_step()
    for name in args.only or CANDIDATES:
        print(f"{name}: tuning", flush=True)
        try:
            r = tune(name, tune_faces, tune_free, lambda m: print(m, flush=True))
            r["test"] = evaluate(name, r["params"], test_faces, test_free, lfw, timing, extract, args.repeats)
        except (ImportError, FileNotFoundError) as e:
            r = {"error": f"not installed: {e}"}
        result["candidates"][name] = r
        print(f"{name}: {json.dumps(r.get('test', r), default=float)}", flush=True)
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        (out / "face_detectors.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    md = markdown(result)
    (out / "face_detectors.md").write_text(md)
    print(md)
    print(f"wrote {out / 'face_detectors.json'} and {out / 'face_detectors.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
