"""How many camera scenes a gateway core takes per second: the face stage's path, frame by frame, stage by stage.

For 640x480 and 1280x720 frames with 0, 1 and 4 faces (``bench.scenes``: real ORL and LFW faces pasted on
scikit-image's photographs, or with ``--faces synthetic`` the procedural faces, no data set needed), each
frame goes through the gateway's own code on one thread, timed in process CPU seconds
(``time.process_time``, so a rate is per core and other processes do not inflate it):

- *decode*: the MQTT payload (a JPEG ImageFrame, as a camera sends it) through the bounded msgpack decode,
  the frame's validation and :func:`schemas.media.decode_image`, as ``gateway.extraction`` does;
- *detect*: the detector call of :meth:`gateway.faces.FaceStage.find` (the default detector, as the gateway
  makes it), measured around the detector that stage holds;
- *crop*: the rest of ``find``: bounding, ``min_face_px`` / ``max_faces`` and :func:`models.faces.crop_square`;
- *preprocess*: the bundle's ``preprocess`` of each crop (the 64x64 network input);
- *extract*: the extractor on the frame's faces as one batch, the bundle's home part on ONNX Runtime
  (``runtime onnx``, one thread) as the gateway serves it.

    python -m bench.scene_speed --out DIR [--bundle DIR] [--frames 20] [--repeats 3] [--faces real|synthetic]

Without ``--bundle`` the extractor is an untrained bundle of the default image architecture at the default
(private) cut and dimensions, as ``bench.footprint`` makes it: the same network and compute as the trained
default, random weights (the cost does not depend on the weights). Each figure is the total CPU time over
``frames`` frames x ``repeats`` passes (after one warm pass), per frame. Writes ``DIR/scene-speed.json`` and
``DIR/scene-speed.md`` and prints the table. Issue 13's target: 30 frames per second per core at 640x480
with one face.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import scenes
from bench.report import header, machine, setup_lines, table_head

STAGES = ("decode", "detect", "crop", "preprocess", "extract")
FACE_COUNTS = (0, 1, 4)
TARGET_FPS_640_1 = 30.0
IMAGE_SHAPE = {"cut": "block3", "dims": 1, "noise_std": 0.35}
"""The default (private) image embedding's cut and dimensions (as ``bench.footprint.DEFAULT_SHAPES``)."""


class TimedDetector:
    """The face stage's detector, with the CPU seconds of its calls added up (the stage calls ``detect``)."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.seconds = 0.0

    def detect(self, pixels):
        t0 = time.process_time()
        try:
            return self.detector.detect(pixels)
        finally:
            self.seconds += time.process_time() - t0


def face_stage(detector):
    """A :class:`gateway.faces.FaceStage` with the gateway's default settings around ``detector``; what it
    would publish (a no-face result) is dropped."""
    from gateway.config import GatewaySettings
    from gateway.faces import FaceLedger, FaceStage
    from gateway.metrics import Metrics

    s = GatewaySettings()
    return FaceStage(detector, gateway="bench", task="glasses", model="bench", max_faces=s.max_faces,
                     min_face_px=s.min_face_px, crop_max_px=s.face_crop_max_px, metrics=Metrics(),
                     ledger=FaceLedger(), publish=lambda topic, body: None, result_topic=lambda device: device)


def decode(payload: bytes) -> np.ndarray:
    """A camera frame's MQTT payload -> its pixels, through the calls ``gateway.extraction`` makes."""
    from schemas.codec import unpack_map
    from schemas.limits import DEFAULT_LIMITS
    from schemas.media import ImageFrame, decode_image

    frame = ImageFrame.from_wire(unpack_map(payload, getattr(DEFAULT_LIMITS, ImageFrame.PAYLOAD_LIMIT),
                                            DEFAULT_LIMITS))
    return decode_image(frame)


def frame_path(payload: bytes, stage, extractor, spent: dict) -> int:
    """One frame through decode, detection, crop, preprocessing and extraction; CPU seconds added to
    ``spent`` per stage. Returns the faces sent."""
    t0 = time.process_time()
    pixels = decode(payload)
    t1 = time.process_time()
    detected = stage.detector.seconds
    found = stage.find(pixels)
    t2 = time.process_time()
    crops = [pixels] if found is None else [crop for _, crop in found.faces]  # None: a crop-sized frame
    xs = [extractor.preprocess(c) for c in crops]
    t3 = time.process_time()
    if xs:
        extractor.extract_batch(xs)
    t4 = time.process_time()
    det = stage.detector.seconds - detected
    for name, dt in zip(STAGES, (t1 - t0, det, t2 - t1 - det, t3 - t2, t4 - t3)):
        spent[name] += dt
    return len(crops)


def make_frames(faces: str, size: tuple[int, int], n_faces: int, count: int, seed: int) -> list[scenes.Scene]:
    """``count`` scenes of ``size`` with exactly ``n_faces`` pasted faces (real or procedural)."""
    rng = np.random.default_rng([seed, size[0], n_faces])
    if n_faces == 0:
        return scenes.face_free(count, seed + size[0], sizes=(size,))
    if faces == "synthetic":
        return [scenes.synthetic_composite(rng, size, n_faces, seed) for _ in range(count)]
    return [scenes.composite(rng, size, n_faces, "test") for _ in range(count)]


def measure(frames: list[scenes.Scene], stage, extractor, repeats: int, quality: int) -> dict:
    """CPU milliseconds per frame by stage over ``repeats`` passes of ``frames``, and what they found."""
    from schemas.media import ImageFrame

    payloads = [ImageFrame.from_array(s.image, device="cam", seq=i, ts=time.time(), codec="jpeg",
                                      quality=quality).encode() for i, s in enumerate(frames)]
    warm = {k: 0.0 for k in STAGES}
    for p in payloads:
        frame_path(p, stage, extractor, warm)
    spent = {k: 0.0 for k in STAGES}
    sent = 0
    for _ in range(repeats):
        for p in payloads:
            sent += frame_path(p, stage, extractor, spent)
    n = len(payloads) * repeats
    ms = {k: 1e3 * v / n for k, v in spent.items()}
    total = sum(ms.values())
    return {"frames": len(frames), "passes": repeats, "true_faces_per_frame": float(np.mean([len(s.boxes) for s in frames])),
            "faces_sent_per_frame": sent / n, "jpeg_kb": float(np.mean([len(p) for p in payloads]) / 1024),
            "ms_per_frame": total, "fps_per_core": 1e3 / total if total > 0 else float("inf"),
            "ms_by_stage": ms, "share_by_stage": {k: v / total if total > 0 else 0.0 for k, v in ms.items()}}


def ceiling(bundle: str | Path, images: list[np.ndarray], repeats: int = 2) -> tuple[float, dict]:
    """Frames per CPU second (one thread) of the face path over ``images``, and its details: the pipeline
    benchmark's runtime ceiling for camera scenes."""
    from gateway.config import GatewaySettings
    from models.bundle import load_extractor
    from models.faces import make_detector

    extractor = load_extractor(bundle, runtime="onnx", threads=1)
    stage = face_stage(TimedDetector(make_detector(GatewaySettings().face_detector)))
    frames = [scenes.Scene(img, np.zeros((0, 4)), "") for img in images]
    r = measure(frames, stage, extractor, repeats, 90)
    r.pop("true_faces_per_frame")
    return r["fps_per_core"], {"runtime": extractor.runtime, "batch": "each frame's faces", "face_path": r}


def load_image_extractor(bundle: str | None, work: Path):
    """The home part of ``bundle`` (or of an untrained default one) on ONNX Runtime, one thread."""
    from models.bundle import load_extractor, make_untrained_bundle

    if bundle is None:
        bundle = str(work / "untrained-image")
        make_untrained_bundle(bundle, "image", **IMAGE_SHAPE)
    return load_extractor(bundle, runtime="onnx", threads=1), bundle


def markdown(result: dict) -> str:
    lines = header("privedge camera scenes per core", result["machine"], result["settings"])
    lines += table_head("frame", "faces (true / sent)", "JPEG KB", "ms / frame", "frames/s per core",
                        *(f"{s} %" for s in STAGES))
    for key, r in result["runs"].items():
        lines.append(f"| {key} | {r['true_faces_per_frame']:.1f} / {r['faces_sent_per_frame']:.2f} | "
                     f"{r['jpeg_kb']:.0f} | {r['ms_per_frame']:.2f} | {r['fps_per_core']:.1f} | "
                     + " | ".join(f"{100 * r['share_by_stage'][s]:.0f}" for s in STAGES) + " |")
    t = result.get("target")
    if t:
        lines += ["", f"Target (issue 13): at least {t['fps']:.0f} frames/s per core at 640x480 with one face "
                      f"(detection, crop and extractor): {t['measured']:.1f}, {'met' if t['met'] else 'NOT met'}."]
    lines += ["", "One thread, process CPU time (other processes on the machine do not count, but share the "
                  "caches: the load average is in the header). *detect* is the detector call inside the face "
                  "stage; *crop* the rest of the stage (bounding, limits, the square crop); *decode* includes "
                  "the msgpack envelope and the frame's checks; *extract* is one batch of the frame's faces.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scene_speed", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for scene-speed.json and scene-speed.md")
    p.add_argument("--bundle", help="image bundle whose home part runs (default: an untrained default one)")
    p.add_argument("--frames", type=int, default=20, help="distinct frames per size and face count (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over them (default 3)")
    p.add_argument("--faces", choices=("real", "synthetic"), default="real",
                   help="ORL and LFW faces (needs the shared data) or procedural ones (default real)")
    p.add_argument("--size", action="append", choices=[f"{w}x{h}" for w, h in scenes.SIZES],
                   help="frame sizes (repeatable; default both)")
    p.add_argument("--face-count", action="append", type=int, choices=FACE_COUNTS,
                   help="faces per frame (repeatable; default 0, 1 and 4)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the frames (default 90, the sensors')")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import threadpoolctl

    threadpoolctl.threadpool_limits(1)
    from gateway.config import GatewaySettings
    from models.faces import make_detector

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(map(int, s.split("x"))) for s in args.size] if args.size else list(scenes.SIZES)
    counts = args.face_count or list(FACE_COUNTS)
    with tempfile.TemporaryDirectory(prefix="privedge-scene-speed-") as tmp:
        extractor, bundle = load_image_extractor(args.bundle, Path(tmp))
        detector_kind = GatewaySettings().face_detector
        stage = face_stage(TimedDetector(make_detector(detector_kind)))
        settings = {**{k: v for k, v in vars(args).items() if k not in ("out", "bundle", "size", "face_count")},
                    "sizes": [f"{w}x{h}" for w, h in sizes], "face_counts": counts, "threads": 1,
                    "bundle": args.bundle or f"untrained default ({IMAGE_SHAPE})", "runtime": extractor.runtime,
                    "detector": detector_kind, "codec": "jpeg"}
        result = {"machine": machine(), "settings": settings, "runs": {}}
        print(setup_lines(result["machine"], settings), flush=True)
        for w, h in sizes:
            for n in counts:
                frames = make_frames(args.faces, (w, h), n, args.frames, args.seed)
                key = f"{w}x{h}, {n} face{'s' if n != 1 else ''}"
                result["runs"][key] = r = measure(frames, stage, extractor, args.repeats, args.quality)
                print(f"{key}: {r['fps_per_core']:.1f} frames/s per core ({r['ms_per_frame']:.2f} ms; "
                      + ", ".join(f"{s} {100 * r['share_by_stage'][s]:.0f}%" for s in STAGES) + ")", flush=True)
    one = result["runs"].get("640x480, 1 face")
    if one is not None:
        result["target"] = {"fps": TARGET_FPS_640_1, "measured": one["fps_per_core"],
                            "met": one["fps_per_core"] >= TARGET_FPS_640_1}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "scene-speed.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "scene-speed.md").write_text(md)
    print(md)
    print(f"wrote {out / 'scene-speed.json'} and {out / 'scene-speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
