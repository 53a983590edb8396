"""Procedural 64x64 grayscale faces with identities and a glasses-like attribute.

The built-in stand-in for ORL, so the demo and smoke tests run with no dataset. Each identity has stable
traits (face width and height, skin tone, hair tone and hairline, eye spacing/size/height, eyebrows, nose
and mouth geometry, beard); each image adds nuisance (shift, rotation, scale, lighting gradient,
expression, blink, sensor noise). Glasses follow the person in most identities (never / always) and change
from image to image in a few, as in ORL. Everything is drawn with soft signed-distance masks on numpy
grids, vectorised over images: 1000 faces take a couple of seconds, then come from the cache.

Protocol "synthetic-faces" has the ORL structure: the people are split into disjoint model / attack
halves (by seed); the attacker trains on images 1-7 of each attack person and is tested on images 8-10.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from models.data.cache import cache_key, load_cached, save_cached
from models.data.samples import Protocol, Samples, split_people, unseen_people_protocol
from models.preprocess import IMAGE_SIZE

log = logging.getLogger(__name__)

GLASSES_LABELS = ["no_glasses", "glasses"]
SIZES = {"full": (100, 10), "small": (50, 10)}
"""size -> (identities, images per identity)."""
ATTACK_TRAIN_IMAGES = 7
"""Images 1-7 of each attack person train the attacker, the rest test it (as ORL)."""
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class FaceSet:
    """Generated faces: images uint8 (N, 64, 64); glasses, identity, image index (0-based): int64 (N,)."""

    images: np.ndarray
    glasses: np.ndarray
    identity: np.ndarray
    image_index: np.ndarray


def _identity_traits(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stable per-person parameters, each an array (n,). Lengths are in units of half the image side."""
    kind = rng.choice(3, size=n, p=[0.63, 0.2, 0.17])  # never / always / sometimes wears glasses
    return {
        "face_w": rng.uniform(0.48, 0.68, n), "face_h": rng.uniform(0.66, 0.86, n),
        "skin": rng.uniform(0.45, 0.85, n), "hair": rng.uniform(0.05, 0.6, n),
        "hairline": rng.uniform(-0.62, -0.3, n), "hair_side": rng.uniform(0.0, 0.14, n),
        "eye_dx": rng.uniform(0.16, 0.27, n), "eye_y": rng.uniform(-0.2, -0.02, n),
        "eye_r": rng.uniform(0.045, 0.085, n), "brow_h": rng.uniform(0.09, 0.16, n),
        "brow_t": rng.uniform(0.012, 0.035, n), "brow_tilt": rng.uniform(-0.25, 0.25, n),
        "nose_len": rng.uniform(0.14, 0.3, n), "nose_w": rng.uniform(0.03, 0.08, n),
        "mouth_y": rng.uniform(0.32, 0.5, n), "mouth_w": rng.uniform(0.12, 0.26, n),
        "lip": rng.uniform(0.015, 0.04, n), "beard": (rng.random(n) < 0.2) * rng.uniform(0.1, 0.35, n),
        "glasses_kind": kind, "frame_r": rng.uniform(1.5, 2.1, n),
    }


def _mask(d: np.ndarray, edge: float = 0.02) -> np.ndarray:
    """Soft inside-mask from a signed distance (negative inside), antialiased over ``edge``."""
    return 1.0 / (1.0 + np.exp(np.clip(d * np.float32(1.0 / edge), -40, 40)))


def _ellipse(x, y, cx, cy, ax, ay) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside), in grid units."""
    return (np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) - 1.0) * np.minimum(ax, ay)


def _paint(img: np.ndarray, mask: np.ndarray, tone) -> np.ndarray:
    return img * (1.0 - mask) + tone * mask


def render_faces(traits: dict[str, np.ndarray], who: np.ndarray, glasses: np.ndarray,
                 rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw one face per entry of ``who`` (indices into ``traits``) -> uint8 (N, size, size).

    ``glasses``: bool/int (N,), whether each face wears glasses. Nuisance is drawn from ``rng``.
    ``size``: the side in pixels; the training set is drawn at 64 (the network input), camera scenes
    (``bench.scenes``) draw their faces at the size they paste them, so they are sharp, not upscaled.
    """
    n = len(who)
    glasses = np.asarray(glasses, dtype=np.float32)
    t = {k: v[who][:, None, None].astype(np.float32) for k, v in traits.items()}  # (N, 1, 1) each

    def nuisance(lo, hi):
        return rng.uniform(lo, hi, n)[:, None, None].astype(np.float32)

    angle, scale = nuisance(-0.14, 0.14), nuisance(0.92, 1.08)
    dx, dy = nuisance(-0.08, 0.08), nuisance(-0.08, 0.08)
    smile, mouth_open, blink = nuisance(-0.6, 1.0), nuisance(0.0, 1.0), nuisance(0.55, 1.0)
    light_dir = rng.uniform(0, 2 * np.pi, n)[:, None, None].astype(np.float32)
    light_amp, background = nuisance(0.0, 0.35), nuisance(0.05, 0.3)

    axis = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    gy, gx = np.meshgrid(axis, axis, indexing="ij")  # (64, 64), y grows downwards
    # Face coordinates: undo the per-image shift, rotation and scale.
    qx, qy = gx[None] - dx, gy[None] - dy
    x = (np.cos(angle) * qx + np.sin(angle) * qy) / scale  # (N, 64, 64)
    y = (-np.sin(angle) * qx + np.cos(angle) * qy) / scale

    img = np.broadcast_to(background, (n, size, size)).copy()
    hair_mass = _ellipse(x, y, 0.0, -0.08, t["face_w"] + t["hair_side"] + 0.05, t["face_h"] + 0.12)
    img = _paint(img, _mask(hair_mass) * _mask(y - (t["hairline"] + 0.55)), t["hair"])
    face = _ellipse(x, y, 0.0, 0.02, t["face_w"], t["face_h"])
    img = _paint(img, _mask(face) * _mask(t["hairline"] - y, 0.03), t["skin"])
    img = _paint(img, _mask(face) * _mask(t["mouth_y"] - 0.08 - y, 0.04), t["skin"] * (1 - t["beard"]))

    for side in (-1.0, 1.0):
        ex = side * t["eye_dx"]
        eye = _ellipse(x, y, ex, t["eye_y"], t["eye_r"] * 1.4, t["eye_r"] * blink)
        img = _paint(img, _mask(eye, 0.012), 0.92)
        img = _paint(img, _mask(_ellipse(x, y, ex, t["eye_y"], t["eye_r"] * 0.6, t["eye_r"] * 0.6 * blink), 0.01),
                     0.08)
        by = t["eye_y"] - t["brow_h"] + side * t["brow_tilt"] * (x - ex)
        brow = np.maximum(np.abs(y - by) - t["brow_t"], np.abs(x - ex) - t["eye_r"] * 1.8)
        img = _paint(img, _mask(brow, 0.012), t["hair"] * 0.8)
        frame = np.abs(_ellipse(x, y, ex, t["eye_y"], t["eye_r"] * t["frame_r"] * 1.2,
                                t["eye_r"] * t["frame_r"])) - 0.013
        img = _paint(img, _mask(frame, 0.01) * glasses[:, None, None], 0.05)
    bridge = np.maximum(np.abs(y - t["eye_y"]) - 0.012, np.abs(x) - (t["eye_dx"] - t["eye_r"] * t["frame_r"] * 1.1))
    img = _paint(img, _mask(bridge, 0.01) * glasses[:, None, None], 0.05)

    nose_y0 = t["eye_y"] + 0.04
    nose = np.maximum(np.abs(x) - t["nose_w"] * (y - nose_y0) / t["nose_len"],
                      np.maximum(nose_y0 - y, y - nose_y0 - t["nose_len"]))
    img = _paint(img, _mask(nose, 0.02) * 0.35, t["skin"] * 0.55)
    mouth_c = t["mouth_y"] + smile * 0.25 * (t["mouth_w"] ** 2 - x ** 2) / t["mouth_w"]
    mouth = np.maximum(np.abs(y - mouth_c) - t["lip"] * (1 + 1.5 * mouth_open), np.abs(x) - t["mouth_w"])
    img = _paint(img, _mask(mouth, 0.012), 0.15)

    light = 1.0 + light_amp * (np.cos(light_dir) * gx[None] + np.sin(light_dir) * gy[None])
    img = img * light + rng.normal(0.0, 0.025, img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def generate_faces(n_identities: int, images_per_identity: int = 10, *, seed: int = 0) -> FaceSet:
    """Generate (and cache) ``n_identities x images_per_identity`` faces, ordered by identity then image.

    Deterministic by ``seed``; the same seed gives the same people whatever the image count.
    """
    if n_identities < 2 or images_per_identity < 2:
        raise ValueError(f"need >= 2 identities and >= 2 images each, got {n_identities} x {images_per_identity}")
    key = cache_key("synthetic-faces", {"v": GENERATOR_VERSION, "n": n_identities,
                                        "k": images_per_identity, "seed": seed})
    cached = load_cached(key)
    if cached is not None:
        return FaceSet(**cached)
    traits = _identity_traits(n_identities, np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 1])
    who = np.repeat(np.arange(n_identities), images_per_identity)
    kind = traits["glasses_kind"][who]
    glasses = np.where(kind == 2, rng.random(len(who)) < 0.5, kind == 1).astype(np.int64)
    images = render_faces(traits, who, glasses, rng)
    faces = FaceSet(images=images, glasses=glasses, identity=who.astype(np.int64),
                    image_index=np.tile(np.arange(images_per_identity), n_identities).astype(np.int64))
    save_cached(key, {k: getattr(faces, k) for k in ("images", "glasses", "identity", "image_index")})
    return faces


def synthetic_faces_protocol(*, seed: int = 0, size: str = "full") -> Protocol:
    """Protocol "synthetic-faces", task "glasses": disjoint model / attack people, attack images 1-7 / 8-10."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    n_ids, per_id = SIZES[size]
    faces = generate_faces(n_ids, per_id, seed=seed)
    samples = Samples(
        modality="image", x=(faces.images.astype(np.float32) / 255.0)[:, None],  # (N, 1, 64, 64)
        primary=faces.glasses, identity=faces.identity, primary_names=list(GLASSES_LABELS),
        identity_names=[f"face{i:03d}" for i in range(n_ids)], rate=None,
    )
    model_people, _ = split_people(faces.identity, seed)
    return unseen_people_protocol("synthetic-faces", "glasses", samples, model_people,
                                  faces.image_index < ATTACK_TRAIN_IMAGES)
