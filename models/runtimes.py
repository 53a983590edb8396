"""What can run a bundle's halves, and how many threads they get; named once for the services' settings,
:mod:`models.bundle` and :mod:`models.onnx_runtime`.

``torch``: the training and reference runtime; ``onnx``: ONNX Runtime (the bundle must carry the ``.onnx``
file); ``auto``: ONNX Runtime where the bundle carries the file, else torch. This module imports no
third-party package at import time, so the settings of the gateway and the workers can name the runtimes
without importing torch or onnxruntime.
"""
from __future__ import annotations

import os
import sys

RUNTIMES = ("auto", "onnx", "torch")

_threads: int | None = None


def limit_threads(n: int) -> None:
    """This process's share of the cores: every BLAS/OpenMP pool (numpy's OpenBLAS would otherwise keep a
    spinning thread per core) set to ``n``, and torch's intra-op threads if torch is loaded now or later
    (:func:`torch_threads`). ONNX Runtime sessions made afterwards take ``n`` (:func:`threads`). A gateway
    and its workers on one machine each get their own ``n``."""
    import threadpoolctl

    global _threads
    _threads = max(1, int(n))
    threadpoolctl.threadpool_limits(limits=_threads)
    if "torch" in sys.modules:  # never imported for this: a gateway on ONNX Runtime runs without torch
        torch_threads()


def threads() -> int:
    """The thread count set by :func:`limit_threads`, else this machine's cores."""
    return _threads if _threads is not None else max(1, os.cpu_count() or 1)


def torch_threads() -> None:
    """Apply :func:`limit_threads`' count to torch (called where the torch runtime is first used)."""
    if _threads is not None:
        import torch

        if torch.get_num_threads() != _threads:
            torch.set_num_threads(_threads)
