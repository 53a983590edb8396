"""Start-up done before the first input: one dummy inference, and the start-up objects out of the GC's way.

torch allocates and lays out its kernels on the first forward pass, and the speech front end's
librosa/numba kernels compile on the first utterance (seconds). The gateway warms its extractors, the
benchmark's cloud-only worker its whole networks; both through :func:`warm_up`.

Then :func:`freeze_start_up`: the modules, bundles and clients loaded at start live as long as the process,
yet every full collection of Python's cyclic garbage collector walks them all. A process holding what a
gateway on ONNX Runtime holds with both bundles has about 50,000 of them, 9-26 ms per full collection
(200,000 and 65-75 ms with the training stack loaded), time in which every thread of the process waits: a
stall in the latency tail. ``gc.freeze()`` moves them to the permanent generation, which
collections skip (a full collection then takes microseconds); the gateway and the worker call it once
they are started.
"""
from __future__ import annotations

import gc
import time
from typing import Callable

import numpy as np

DUMMY_RATE = 8000
"""Sample rate of the dummy utterance, Hertz (the front end resamples it: that compiles the resampler too)."""


def dummy_input(modality: str) -> object:
    """A raw input of ``modality`` as a model's ``preprocess`` takes it: a black 64x64 uint8 frame for
    ``image``, else half a second of silence ``(float32 wave, rate)``."""
    if modality == "image":
        return np.zeros((64, 64), np.uint8)
    return np.zeros(DUMMY_RATE // 2, np.float32), DUMMY_RATE


def warm_up(preprocess: Callable[[object], np.ndarray], run: Callable[[list[np.ndarray]], object],
            modality: str) -> float:
    """Preprocess one dummy input of ``modality`` and ``run`` the network on it (a batch of one); the output is
    thrown away. Returns the seconds it took. The gateway passes its extractor's preprocess and its loop's
    forward pass; the benchmark's cloud-only worker its whole network's."""
    t0 = time.perf_counter()
    run([preprocess(dummy_input(modality))])
    return time.perf_counter() - t0


def freeze_start_up() -> int:
    """Collect once, then freeze every object alive (``gc.freeze``): start-up's long-lived objects leave the
    collections. Returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
