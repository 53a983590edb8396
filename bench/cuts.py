"""The paper's cost claim side by side: split with the extractor ending at block1..block4, next to
local_only (the whole network at the gateway) and cloud_only (the raw media up, the whole network in a
worker), on the same inputs, machine and runtime (the services' default: ONNX Runtime for these bundles).

Each run is the pipeline benchmark's saturation phase (bench.pipeline.run_mode without the fixed
load): gateway CPU seconds per inference over the steady window and its peak resident memory (VmHWM),
with the extractor's multiply-adds per input for reference. Bundles are untrained ones of the default
architecture cut at each block: the compute is what a trained bundle's would be.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bench.loadgen import Inputs
from bench.pipeline import PipelineSettings, Stack, run_mode
from bench.report import table_head

log = logging.getLogger(__name__)

CUTS = ("block1", "block2", "block3", "block4")
SHOWN = ("throughput_per_s", "gateway_cpu_s_per_inference", "gateway_peak_rss_mb", "bytes_up_per_inference")


def extractor_macs(bundle: Path) -> int:
    """Multiply-adds of the bundle's extractor for one input."""
    from models.bundle import load_extractor
    from models.nets import count_cost

    ext = load_extractor(bundle, runtime="torch")
    return count_cost(ext.module, ext.input_shape).macs


def cut_points(stack: Stack, modality: str, inputs: Inputs, s: PipelineSettings, work: Path) -> dict:
    """{cut: figures + extractor_macs, "local_only": figures, "cloud_only": figures} for one modality."""
    from models import signing
    from models.bundle import make_untrained_bundle

    signing.local_provider(work)  # the untrained bundles are signed, and the services pin the key
    out: dict = {}
    for cut in CUTS:
        bundle = work / f"{modality}-{cut}"
        if not (bundle / signing.SIGNATURE).exists():  # made by an earlier run, signed
            make_untrained_bundle(bundle, modality, cut=cut)
        figures, details = run_mode(stack, bundle, inputs, "split", s, latency=False)
        out[cut] = {**{k: figures[k] for k in SHOWN}, "extractor_macs": extractor_macs(bundle),
                    "worker_cpu_s_per_inference": details.get("worker_cpu_s_per_inference")}
    for mode in ("local_only", "cloud_only"):  # neither depends on the cut: the whole network runs in one place
        figures, details = run_mode(stack, work / f"{modality}-block3", inputs, mode, s, latency=False)
        out[mode] = {**{k: figures[k] for k in SHOWN},
                     "worker_cpu_s_per_inference": details.get("worker_cpu_s_per_inference")}
    return out


def cuts_markdown(cuts: dict) -> list[str]:
    """Markdown lines of the cut-point table."""
    lines = ["## Cost per cut point (saturation): split at each cut next to local_only and cloud_only", "",
             *table_head("modality", "mode", "gateway runs", "extractor MMACs", "inferences/s",
                         "gateway CPU ms / inference", "worker CPU ms / inference", "gateway peak RSS MiB",
                         "bytes up / inference")]
    runs = {"local_only": "the whole network", "cloud_only": "nothing (raw media up)"}
    for modality, rows in cuts.items():
        for name, r in rows.items():
            macs = f"{r['extractor_macs'] / 1e6:.2f}" if "extractor_macs" in r else "-"
            mode, what = ("split", f"extractor to {name}") if name in CUTS else (name, runs[name])
            worker = r.get("worker_cpu_s_per_inference")
            lines.append(f"| {modality} | {mode} | {what} | {macs} | {r['throughput_per_s']:.1f} | "
                         f"{r['gateway_cpu_s_per_inference'] * 1e3:.2f} | "
                         f"{'-' if worker is None else f'{worker * 1e3:.2f}'} | {r['gateway_peak_rss_mb']:.1f} | "
                         f"{r['bytes_up_per_inference']:.0f} |")
    return lines + ["All on the same runtime (the services' default, ONNX Runtime for these bundles). Worker CPU "
                    "is the worker process's, per result; local_only has no worker.", ""]
