"""Camera scenes built from real photographs, with the true box of every face, to measure face detectors.

- :func:`composites`: 1-4 real faces (ORL and LFW) pasted, scaled and at random non-overlapping places,
  onto the real photographs scikit-image ships, at 640x480 or 1280x720.
- :func:`face_free`: those photographs alone, randomly rescaled, cropped and mirrored (false positives).
- :func:`lfw_frames`: LFW's own 250x250 photographs with the box of their centred face.
- :func:`synthetic_composites`: the procedural faces of :mod:`models.data.synth_faces` pasted on those
  photographs the same way, no data set needed (the demo's camera, and the speed benchmark without
  ``../shared/data``).

Everything is built in memory from a seed: the same seed gives the same frames. ``python -m bench.scenes
--out DIR`` writes a set to disk (PNG frames, ``boxes.json`` with the true boxes, and with ``--video FPS``
an MJPG video of the 640x480 ones), to feed ``privedge sensor camera --source DIR|DIR/scenes.avi`` or
another detector.
A pasted face is its photograph's head region (the whole 92x112 ORL photo; LFW's 200x200 around the face) with a
feathered edge (10% of the patch) so the paste has no hard rectangle for a detector to key on. Its true box
is the face box convention of :mod:`models.faces` (eyebrows to chin, cheek to cheek), fixed per data set
because both sets are aligned: ORL (10, 32, 72, 72) of 92x112, LFW (69, 79, 112, 112) of 250x250.
``split`` keeps tuning and test faces apart by person (ORL s1-s10 and a quarter of LFW's people tune;
the rest test). ``astronaut`` and ``camera`` show a person, so they are never backgrounds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(os.environ.get("PRIVEDGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
"""The shared real datasets (``PRIVEDGE_DATA`` overrides, as for the tests)."""
BACKGROUNDS = ("coffee", "chelsea", "rocket", "horse", "brick", "grass", "gravel", "clock", "coins", "moon",
               "page", "text", "hubble_deep_field", "immunohistochemistry", "retina", "cell",
               "stereo_motorcycle")
SIZES = ((640, 480), (1280, 720))
ORL_BOX = (10, 32, 72, 72)  # x, y, w, h of the face in a 92x112 ORL photo
LFW_BOX = (69, 79, 112, 112)  # x, y, w, h of the centre face in a 250x250 LFW photo
LFW_PATCH = (25, 30, 200, 200)  # the head region pasted from an LFW photo
FACE_SIDE = {640: (56, 200), 1280: (80, 300)}  # true box side range in pixels, by frame width
FEATHER = 0.10
SYNTH_SIDE = {640: (150, 230), 1280: (200, 340)}  # side of a pasted procedural face's square, by frame width
SYNTH_BOX = (0.11, 0.24, 0.78, 0.78)
"""The face box of a procedural face, as parts of its side: the training framing (the synthetic 64x64 faces
stand for ORL's 92x92 crops, in which ORL's box is (10, 22, 72, 72)), so its crop is the whole drawing."""
SYNTH_PEOPLE = 50


@dataclass(frozen=True)
class Scene:
    """A frame (uint8 HxWx3 RGB) and the true face boxes (n, 4) x, y, w, h in its pixels."""

    image: np.ndarray
    boxes: np.ndarray
    background: str


@lru_cache(maxsize=None)
def background(name: str) -> np.ndarray:
    """A scikit-image photograph as uint8 HxWx3."""
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3].astype(np.uint8))


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))


def _scene_background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, str]:
    """A random rescale, crop and mirror of a random photograph, covering w x h."""
    name = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg = background(name)
    s = max(w / bg.shape[1], h / bg.shape[0]) * rng.uniform(1.0, 1.6)
    big = _resize(bg, int(np.ceil(bg.shape[1] * s)), int(np.ceil(bg.shape[0] * s)))
    y0 = rng.integers(big.shape[0] - h + 1)
    x0 = rng.integers(big.shape[1] - w + 1)
    out = big[y0:y0 + h, x0:x0 + w]
    return (out[:, ::-1] if rng.random() < 0.5 else out).copy(), name


def _split_ok(person: str, split: str) -> bool:
    tune = zlib.crc32(person.encode()) % 4 == 0
    return tune if split == "tune" else not tune


@lru_cache(maxsize=None)
def _orl(split: str) -> tuple[np.ndarray, ...]:
    subjects = range(1, 11) if split == "tune" else range(11, 41)
    return tuple(np.asarray(Image.open(DATA / "orl" / f"s{s}" / f"{i}.pgm"), dtype=np.uint8)
                 for s in subjects for i in range(1, 11))


@lru_cache(maxsize=None)
def lfw_paths(split: str | None = None) -> tuple[Path, ...]:
    """LFW photographs, sorted; with ``split``, only the people of that split."""
    paths = sorted((DATA / "lfw" / "images").glob("*/*.jpg"))
    return tuple(p for p in paths if split is None or _split_ok(p.parent.name, split))


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _face_patch(rng: np.random.Generator, split: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A face patch (uint8 hxwx3) and its true box inside the patch."""
    if rng.random() < 0.5:
        faces = _orl(split)
        grey = faces[rng.integers(len(faces))]
        return np.repeat(grey[:, :, None], 3, axis=2), ORL_BOX
    paths = lfw_paths(split)
    img = _load_rgb(paths[rng.integers(len(paths))])
    x, y, w, h = LFW_PATCH
    bx, by, bw, bh = LFW_BOX
    return img[y:y + h, x:x + w], (bx - x, by - y, bw, bh)


def _feather(h: int, w: int) -> np.ndarray:
    """Alpha (h, w, 1) in [0, 1]: 1 inside, ramping to 0 over FEATHER of the side at each edge."""
    fy, fx = max(1.0, FEATHER * h), max(1.0, FEATHER * w)
    ay = np.clip(np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / fy, 0, 1)
    ax = np.clip(np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / fx, 0, 1)
    return np.minimum(ay[:, None], ax[None, :])[:, :, None]


def composite(rng: np.random.Generator, size: tuple[int, int], n_faces: int, split: str) -> Scene:
    """One frame of ``size`` (w, h) with up to ``n_faces`` pasted faces (fewer only if they cannot fit)."""
    w, h = size
    frame, name = _scene_background(rng, w, h)
    frame = frame.astype(np.float32)
    lo, hi = FACE_SIDE[w]
    taken: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(n_faces):
        patch, (bx, by, bw, _) = _face_patch(rng, split)
        for _attempt in range(50):
            side = rng.uniform(lo, hi)
            k = side / bw
            pw, ph = int(round(patch.shape[1] * k)), int(round(patch.shape[0] * k))
            if pw >= w or ph >= h:
                continue
            x0, y0 = int(rng.integers(w - pw + 1)), int(rng.integers(h - ph + 1))
            if _free(taken, x0, y0, pw, ph):
                break
        else:
            continue
        taken.append((x0, y0, pw, ph))
        scaled = _resize(patch, pw, ph).astype(np.float32)
        alpha = _feather(ph, pw)
        region = frame[y0:y0 + ph, x0:x0 + pw]
        frame[y0:y0 + ph, x0:x0 + pw] = alpha * scaled + (1 - alpha) * region
        boxes.append((x0 + bx * k, y0 + by * k, side, side))
    image = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return Scene(image, np.array(boxes, dtype=np.float64).reshape(-1, 4), name)


def _free(taken: list[tuple[int, int, int, int]], x0: int, y0: int, pw: int, ph: int) -> bool:
    """Whether the rectangle (x0, y0, pw, ph) overlaps none of ``taken``."""
    return all(x0 + pw <= a or a + c <= x0 or y0 + ph <= b or b + d <= y0 for a, b, c, d in taken)


def _head_alpha(side: int) -> np.ndarray:
    """Alpha (side, side, 1): an upright ellipse round a procedural face's head, soft over 12% of its radius
    (the square's dark corners would frame the face with an edge no camera shows)."""
    axis = (np.arange(side) + 0.5) / side * 2.0 - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return np.clip((1.0 - np.sqrt((xx / 0.85) ** 2 + (yy / 0.98) ** 2)) / 0.12, 0, 1)[:, :, None]


@lru_cache(maxsize=None)
def _synth_traits(seed: int) -> dict:
    from models.data.synth_faces import _identity_traits

    return _identity_traits(SYNTH_PEOPLE, np.random.default_rng([seed, 0]))


def synthetic_composite(rng: np.random.Generator, size: tuple[int, int], n_faces: int,
                        seed: int = 0) -> Scene:
    """One frame of ``size`` (w, h) with up to ``n_faces`` procedural faces (people of ``seed``), each drawn
    at the side it is pasted at, inside a soft head-shaped mask, on a photograph as :func:`composite`."""
    from models.data.synth_faces import render_faces

    w, h = size
    frame, name = _scene_background(rng, w, h)
    frame = frame.astype(np.float32)
    lo, hi = SYNTH_SIDE[w]
    traits = _synth_traits(seed)
    taken: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(n_faces):
        for _attempt in range(50):
            side = int(rng.uniform(lo, min(hi, w - 1, h - 1)))
            x0, y0 = int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1))
            if _free(taken, x0, y0, side, side):
                break
        else:
            continue
        taken.append((x0, y0, side, side))
        who, glasses = np.array([rng.integers(SYNTH_PEOPLE)]), np.array([rng.random() < 0.3])
        face = render_faces(traits, who, glasses, rng, size=side)[0].astype(np.float32)[:, :, None]
        alpha = _head_alpha(side)
        region = frame[y0:y0 + side, x0:x0 + side]
        frame[y0:y0 + side, x0:x0 + side] = alpha * face + (1 - alpha) * region
        bx, by, bw, bh = SYNTH_BOX
        boxes.append((x0 + bx * side, y0 + by * side, bw * side, bh * side))
    image = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return Scene(image, np.array(boxes, dtype=np.float64).reshape(-1, 4), name)


def synthetic_composites(n: int, seed: int, sizes=SIZES, faces: tuple[int, int] = (1, 4)) -> list[Scene]:
    """``n`` frames of procedural faces (``faces`` (lo, hi): how many per frame), sizes alternating."""
    rng = np.random.default_rng([seed, 13])
    return [synthetic_composite(rng, sizes[i % len(sizes)], int(rng.integers(faces[0], faces[1] + 1)), seed)
            for i in range(n)]


def composites(n: int, seed: int, split: str = "test", sizes=SIZES) -> list[Scene]:
    """``n`` frames with 1-4 faces each, sizes alternating through ``sizes``."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    return [composite(rng, sizes[i % len(sizes)], int(rng.integers(1, 5)), split) for i in range(n)]


def face_free(n: int, seed: int, sizes=SIZES) -> list[Scene]:
    """``n`` frames of the photographs alone (random rescale, crop and mirror), no faces."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img, name = _scene_background(rng, w, h)
        out.append(Scene(img, np.zeros((0, 4)), name))
    return out


def lfw_frames(n: int | None, seed: int) -> list[Scene]:
    """LFW photographs (all, or a seeded sample of ``n``), each with its centre face's true box."""
    paths = lfw_paths()
    if n is not None and n < len(paths):
        idx = np.sort(np.random.default_rng([seed, 11]).choice(len(paths), n, replace=False))
        paths = tuple(paths[i] for i in idx)
    return [Scene(_load_rgb(p), np.array([LFW_BOX], dtype=np.float64), p.parent.name) for p in paths]


def write_scenes(out: Path, n: int, seed: int, n_free: int = 0, fps: float | None = None) -> dict:
    """``n`` composites and ``n_free`` face-free frames as PNGs under ``out``, their boxes in ``boxes.json``;
    with ``fps`` also ``scenes.avi`` (MJPG) of the 640x480 frames, in order. Returns the boxes index."""
    out.mkdir(parents=True, exist_ok=True)
    scenes = [("scene", s) for s in composites(n, seed)] + [("free", s) for s in face_free(n_free, seed)]
    index = {}
    for i, (kind, scene) in enumerate(scenes):
        name = f"{i:04d}-{kind}.png"  # sorted by name = made in order
        Image.fromarray(scene.image).save(out / name)
        index[name] = {"background": scene.background, "size": [scene.image.shape[1], scene.image.shape[0]],
                       "boxes": [[round(float(v), 1) for v in b] for b in scene.boxes]}
    (out / "boxes.json").write_text(json.dumps(index, indent=1) + "\n")
    if fps:
        import cv2

        writer = cv2.VideoWriter(str(out / "scenes.avi"), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZES[0])
        for _, scene in scenes:
            if scene.image.shape[:2] == SIZES[0][::-1]:
                writer.write(np.ascontiguousarray(scene.image[:, :, ::-1]))
        writer.release()
    return index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scenes", description=write_scenes.__doc__.split(";")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=20, help="frames with 1-4 faces (default %(default)s)")
    p.add_argument("--face-free", type=int, default=0, help="frames of the photographs alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video", type=float, default=None, metavar="FPS", help="also write scenes.avi at FPS")
    args = p.parse_args(argv)
    index = write_scenes(Path(args.out), args.n, args.seed, args.face_free, args.video)
    faces = sum(len(v["boxes"]) for v in index.values())
    print(f"wrote {len(index)} frames ({faces} faces) and boxes.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
