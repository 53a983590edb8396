"""The gateway's cost at each cut point (issue 7): split mode with the extractor ending at block1..block4,
next to local_only (the whole network at the gateway), on the same inputs and machine.

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
    """{cut: figures + extractor_macs, "local_only": figures} for one modality."""
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
    figures, _ = run_mode(stack, work / f"{modality}-block3", inputs, "local_only", s, latency=False)
    out["local_only"] = {k: figures[k] for k in SHOWN}
    return out


def cuts_markdown(cuts: dict) -> list[str]:
    """Markdown lines of the cut-point table."""
    lines = ["## Gateway cost per cut point (split, saturation) next to local_only", "",
             *table_head("modality", "gateway runs", "extractor MMACs", "inferences/s", "gateway CPU ms / inference",
                         "gateway peak RSS MiB", "bytes up / inference")]
    for modality, rows in cuts.items():
        for name, r in rows.items():
            macs = f"{r['extractor_macs'] / 1e6:.2f}" if "extractor_macs" in r else "whole network"
            what = f"extractor to {name}" if name in CUTS else "local_only"
            lines.append(f"| {modality} | {what} | {macs} | {r['throughput_per_s']:.1f} | "
                         f"{r['gateway_cpu_s_per_inference'] * 1e3:.2f} | {r['gateway_peak_rss_mb']:.1f} | "
                         f"{r['bytes_up_per_inference']:.0f} |")
    return lines + [""]
