"""Where a sensor's data comes from: a folder, the synthetic generators, a video, a stream or a live device.

Camera sources yield uint8 frames (HxW or HxWx3); microphone sources yield ``(wave, rate)`` with wave
int16 (frames,) mono or (frames, channels). Every source is an iterator; ``loop=True`` repeats it.

A video file and a network stream (``rtsp://``, ``rtsps://``, ``http://``, ``https://``: an IP camera's
RTSP feed, an MJPEG or HLS URL) share one code path, :func:`video_frames`: OpenCV's ``VideoCapture``
(FFmpeg inside ``opencv-python-headless``) opens both, and frames are sampled at ``rate`` per second of
the video's own clock, so a 25 fps camera read at ``--rate 2`` gives every 12th or 13th frame.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".pgm", ".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg", ".mjpg", ".ts")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
LIVE = ("live", "webcam", "microphone")
"""``--source`` values (optionally ``:INDEX``) that open a live device."""


class SourceError(RuntimeError):
    """A source that does not exist, holds no usable media, or needs a library that is missing."""


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not root.exists():
        raise SourceError(f"source {root} does not exist")
    if root.is_file():
        files = [root] if root.suffix.lower() in suffixes else []
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise SourceError(f"no {'/'.join(suffixes)} files under {root}")
    return files


def _repeat(make: Callable[[], Iterator], loop: bool) -> Iterator:
    """Yield from ``make()`` once, or forever when ``loop``; a pass that yields nothing is an error."""
    for _ in itertools.count() if loop else range(1):
        n = 0
        for n, item in enumerate(make(), 1):
            yield item
        if n == 0:
            raise SourceError("the source yielded no usable media")


def image_folder(root: str | Path, *, loop: bool = False) -> Iterator[np.ndarray]:
    """Frames from every .pgm/.png/.jpg under ``root`` (recursively, sorted by path)."""
    files = _files(Path(root), IMAGE_SUFFIXES)

    def read_all() -> Iterator[np.ndarray]:
        for path in files:
            try:
                with Image.open(path) as im:
                    yield np.asarray(im.convert("L" if im.mode in ("L", "1", "I", "I;16", "P") else "RGB"))
            except OSError as e:  # one bad file should not stop a camera
                log.warning("skipping unreadable image %s: %s", path, e)
    return _repeat(read_all, loop)


def wav_folder(root: str | Path, *, loop: bool = False) -> Iterator[tuple[np.ndarray, int]]:
    """Utterances from every .wav under ``root``: (int16 samples, rate Hz), one per file."""
    import soundfile

    files = _files(Path(root), (".wav",))

    def read_all() -> Iterator[tuple[np.ndarray, int]]:
        for path in files:
            try:
                wave, rate = soundfile.read(str(path), dtype="int16", always_2d=False)
            except (RuntimeError, OSError) as e:  # soundfile.LibsndfileError is a RuntimeError
                log.warning("skipping unreadable wav %s: %s", path, e)
                continue
            yield wave, int(rate)
    return _repeat(read_all, loop)


def _load_synthetic(modality: str):
    try:
        from models.data import load_protocol
    except ImportError as e:
        raise SourceError("the synthetic source needs models.data.load_protocol") from e
    return load_protocol(modality, "synthetic", size="small").test


def synthetic_images(*, loop: bool = False) -> Iterator[np.ndarray]:
    """Procedural faces from ``models.data`` (64x64 gray), as uint8 frames."""
    samples = _load_synthetic("image")
    frames = [np.clip(np.rint(x[0] * 255.0), 0, 255).astype(np.uint8) for x in samples.x]  # (64, 64)
    return _repeat(lambda: iter(frames), loop)


def synthetic_speech(*, loop: bool = False) -> Iterator[tuple[np.ndarray, int]]:
    """Synthetic spoken digits from ``models.data``, as (float32 wave, rate)."""
    samples = _load_synthetic("speech")
    return _repeat(lambda: ((w, int(samples.rate)) for w in samples.x), loop)


def _device_index(source: str) -> int | None:
    _, _, index = source.partition(":")
    if not index:
        return None
    if not index.isdigit():
        raise SourceError(f"bad device index in {source!r}")
    return int(index)


def webcam(source: str = "live", *, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Live frames (RGB) from an OpenCV camera, ``live:INDEX`` picks one (default 0)."""
    try:
        import cv2
    except ImportError as e:
        raise SourceError("a live camera needs OpenCV: pip install opencv-python-headless") from e
    cap = cv2.VideoCapture(_device_index(source) or 0)
    if not cap.isOpened():
        raise SourceError(f"cannot open camera {source!r}")

    def frames() -> Iterator[np.ndarray]:
        try:
            for _ in itertools.count() if max_frames is None else range(max_frames):
                ok, bgr = cap.read()
                if not ok:
                    raise SourceError(f"camera {source!r} stopped delivering frames")
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
    return frames()


def microphone(source: str = "live", *, seconds: float = 1.0, rate: int = 16000) -> Iterator[tuple[np.ndarray, int]]:
    """Live utterances of ``seconds`` s at ``rate`` Hz from a sounddevice input (``live:INDEX``)."""
    try:
        import sounddevice
    except ImportError as e:
        raise SourceError("a live microphone needs sounddevice: pip install sounddevice") from e
    device = _device_index(source)

    def record() -> Iterator[tuple[np.ndarray, int]]:
        while True:
            try:
                wave = sounddevice.rec(int(seconds * rate), samplerate=rate, channels=1, dtype="int16",
                                       device=device, blocking=True)
            except sounddevice.PortAudioError as e:
                raise SourceError(f"microphone {source!r}: {e}") from e
            yield wave[:, 0], rate
    return record()


def is_stream(source: str) -> bool:
    """Whether ``source`` is a network stream URL (RTSP or HTTP)."""
    return source.lower().startswith(STREAM_SCHEMES)


def is_video(source: str) -> bool:
    """Whether ``source`` is a stream URL or a video file (by its suffix)."""
    return is_stream(source) or Path(source).suffix.lower() in VIDEO_SUFFIXES


def is_live(source: str) -> bool:
    """Whether ``source`` delivers in real time by itself (a device or a stream): nobody needs to pace it."""
    return source.partition(":")[0] in LIVE or is_stream(source)


def video_frames(source: str | Path, *, rate: float = 0.0, loop: bool = False,
                 max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames of a video file or an RTSP / HTTP stream, ``rate`` per second of video (0: every frame).

    The video's clock is the decoder's position (``CAP_PROP_POS_MSEC``), else the frame number over the
    declared frame rate, else the wall clock (a stream that reports neither). A file ends (or, with
    ``loop``, starts over); a stream that stops delivering raises :class:`SourceError`. Frames that fail
    to decode are skipped by FFmpeg itself."""
    try:
        import cv2
    except ImportError as e:
        raise SourceError("a video or stream source needs OpenCV: pip install 'privedge[video]'") from e
    if rate < 0:
        raise SourceError(f"rate must be >= 0, got {rate}")
    source = str(source)
    stream = is_stream(source)
    if not stream and not Path(source).is_file():
        raise SourceError(f"source {source} does not exist")

    def open_capture():
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {'stream' if stream else 'video'} {source!r}")
        return cap

    open_capture().release()  # a bad file or an unreachable stream fails here, not at the first next()

    def one_pass() -> Iterator[np.ndarray]:
        cap = open_capture()
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps if 0 < fps < 1000 else 0.0
        t_start, index, next_t = time.monotonic(), 0, 0.0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    if stream:
                        raise SourceError(f"stream {source!r} stopped delivering frames")
                    return
                pos = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                t = pos if pos > 0 else (index / fps if fps else time.monotonic() - t_start)
                index += 1
                if rate > 0:
                    if t + 1e-6 < next_t:
                        continue
                    next_t += 1.0 / rate
                    if next_t <= t:  # after a gap in the video: one frame now, the next a period on
                        next_t = t + 1.0 / rate
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    frames = _repeat(one_pass, loop)
    return frames if max_frames is None else itertools.islice(frames, max_frames)


def open_camera(source: str, *, loop: bool = False, rate: float = 0.0) -> Iterator[np.ndarray]:
    """A camera source from a ``--source`` value: a path (image folder or video file), an RTSP / HTTP
    stream URL, ``synthetic`` or ``live[:INDEX]``; ``rate`` samples a video or stream (0: every frame)."""
    if source == "synthetic":
        return synthetic_images(loop=loop)
    if is_video(source):
        return video_frames(source, rate=rate, loop=loop)
    if is_live(source):
        return webcam(source)
    return image_folder(source, loop=loop)


def open_microphone(source: str, *, loop: bool = False, seconds: float = 1.0) -> Iterator[tuple[np.ndarray, int]]:
    """A microphone source from a ``--source`` value: a path, ``synthetic`` or ``live[:INDEX]``."""
    if source == "synthetic":
        return synthetic_speech(loop=loop)
    if is_live(source):
        return microphone(source, seconds=seconds)
    return wav_folder(source, loop=loop)
