"""What running a bundle costs: parameters, multiply-adds, latency at batch 1 on one thread, memory.

Each measurement runs in a fresh Python process (``python -m models.audit.cost DIR --part extractor``), so
that the memory it adds belongs to that model alone and one thread is really one thread. The
``full`` part is the whole network run at home (local-only serving), for comparison with the extractor.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time

import psutil

log = logging.getLogger(__name__)

PARTS = ("extractor", "full")


class CostError(RuntimeError):
    """The cost-measuring process failed."""


def measure_cost(bundle_dir: str, part: str, *, repeats: int = 50, timeout_s: float = 300.0) -> dict:
    """Cost of one input through ``part`` of the bundle, measured in a child process.

    Returns ``{"params", "macs", "latency_ms" (median, batch 1, one thread), "memory_mb" (resident
    memory the loaded and exercised model adds to a process that has imported torch and privedge; the
    speech front end excluded), "front_end_ms" (speech: pitch shift + log-mel
    of one second of audio; None for images)}``.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    cmd = [sys.executable, "-m", "models.audit.cost", str(bundle_dir), "--part", part,
           "--repeats", str(repeats)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.CalledProcessError as e:
        raise CostError(f"cost of {bundle_dir} ({part}) failed: {e.stderr.strip()[-500:]}") from e
    except subprocess.TimeoutExpired as e:
        raise CostError(f"cost of {bundle_dir} ({part}) took over {timeout_s} s") from e
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _measure(bundle_dir: str, part: str, repeats: int) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from models.bundle import load_extractor, load_full
    from models.nets import count_cost

    torch.set_num_threads(1)
    torch.zeros(8) @ torch.zeros(8)          # the baseline includes torch's own start-up allocations
    base = _rss_mb()
    rng = np.random.default_rng(0)
    if part == "extractor":
        model = load_extractor(bundle_dir, rng=rng)
        run, module = model.extract_batch, model.module
    else:
        model = load_full(bundle_dir, rng=rng)
        run, module = model.predict_batch, model.module
    shape = tuple(model.manifest["arch"]["net"]["in_shape"])
    x = [np.random.default_rng(1).random(shape, dtype=np.float32)]
    with torch.inference_mode():
        for _ in range(3):
            run(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t)
    # Resident memory the model added: weights plus what the allocator kept after the runs (the
    # activations of a batch-1 run are freed into, and reused from, those pools). Taken before the
    # speech front end runs (its FFT plans and filter banks are the front end's, not the model's).
    memory_mb = max(0.0, _rss_mb() - base)
    front_end_ms = None
    if model.manifest["modality"] == "speech":
        rate = int(model.manifest["input"]["rate"])
        wave = (0.1 * np.random.default_rng(2).standard_normal(rate)).astype(np.float32)
        model.preprocess((wave, rate))        # first use builds the windows and filter banks
        t = time.perf_counter()
        for _ in range(5):
            model.preprocess((wave, rate))
        front_end_ms = (time.perf_counter() - t) / 5 * 1000.0
    cost = count_cost(module if isinstance(module, nn.Module) else nn.Sequential(module), shape)
    return {"params": int(cost.params), "macs": int(cost.macs),
            "latency_ms": float(np.median(times) * 1000.0), "memory_mb": memory_mb,
            "front_end_ms": front_end_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cost of one bundle part, as one JSON line")
    parser.add_argument("bundle")
    parser.add_argument("--part", choices=PARTS, default="extractor")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.bundle, args.part, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
