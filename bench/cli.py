"""``privedge bench``: split vs cloud_only vs local_only on this machine, one run, same inputs.

Writes ``OUT/bench.json`` (per modality, one entry per mode with DESIGN.md's figures, plus
``runtime_ceiling_per_s``; beside them ``machine``, ``settings``, ``details``, ``scaling`` and ``cuts``) and
``OUT/bench.md``, and prints the machine, the settings and the tables. Without ``--bundle`` it makes
untrained bundles of the default architecture: the compute per inference is the same as a trained one's.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from bench.pipeline import KEYS, MODES, PipelineSettings, Stack, run_modality
from bench.report import header, machine, setup_lines, table_head

log = logging.getLogger("bench")

MODALITIES = ("image", "speech", "scenes")
"""The inputs: face crops, utterances, and camera scenes (one face each, searched by the face stage)."""
UNITS = {"throughput_per_s": "inferences/s", "latency_p50_ms": "p50 ms", "latency_p99_ms": "p99 ms",
         "bytes_up_per_inference": "bytes up / inference", "gateway_cpu_s_per_inference": "gateway CPU ms / inference",
         "gateway_peak_rss_mb": "gateway peak RSS MiB"}
NOTES = [
    "How the figures are taken: *inferences/s*: results per second over the steady part of a saturation "
    "phase in which the load generator keeps `window` inferences outstanding (the pipeline never waits for "
    "input). *p50/p99*: result arrival on MQTT minus the capture time stamped on the input, at the fixed "
    "offered load (paced, open loop; an utterance's chunks are sent at once). *bytes up*: the msgpack bytes "
    "of every entry the gateway added to Redis streams, read back with XRANGE, per entry. *gateway CPU*: "
    "utime + stime of the `privedge gateway` process over the saturation window, per result. *peak RSS*: "
    "the gateway's VmHWM. The load generator and result listener run in the benchmark's own process on the "
    "same cores; other work on the machine lowers every figure (see the load average above).", ""]


def bundles_by_modality(dirs: list[str] | None, modalities: tuple[str, ...], work: Path) -> dict[str, Path]:
    """Given bundles by their manifest's modality; untrained default ones for the rest, signed with a
    provider key of this run (``models.signing.local_provider``: the services started later pin it)."""
    from models import signing
    from models.bundle import make_untrained_bundle, read_manifest

    out: dict[str, Path] = {}
    for d in dirs or []:
        modality = read_manifest(d)["modality"]
        if modality in out:
            raise SystemExit(f"privedge bench: two bundles for {modality}: {out[modality]} and {d}")
        out[modality] = Path(d)
    for modality in modalities:
        if modality not in out:
            signing.local_provider(work)
            out[modality] = work / f"untrained-{modality}"
            make_untrained_bundle(out[modality], modality)
    return {m: out[m] for m in modalities}


def _fmt(key: str, value: float) -> str:
    if key == "gateway_cpu_s_per_inference":
        return f"{value * 1e3:.2f}"
    return f"{value:.0f}" if key == "bytes_up_per_inference" else f"{value:.1f}"


def stages_markdown(modality: str, figures: dict, details: dict) -> list[str]:
    """Where each mode's gateway time went at saturation (ms per inference by stage, from its stats), the
    process CPU beside it, and for speech the gateway's real-time factor per core."""
    rows = {m: details[m].get("gateway_stages_ms_per_inference") for m in MODES if m in details}
    stages = sorted({k for v in rows.values() if v for k in v})
    if not stages:
        return []
    lines = [f"Where the gateway's time goes ({modality}, saturation; wall ms per inference in each stage, "
             "from its stats topic). The image or speech loop runs decode to publish; `relay` is the results "
             "thread, in parallel, and includes waiting for the broker's PUBACKs; process CPU is the whole "
             "process's, the MQTT client's thread (receive, acknowledge) included:", "",
             *table_head("mode", *stages, "process CPU")]
    for mode, v in rows.items():
        if v:
            lines.append(f"| {mode} | " + " | ".join(f"{v.get(k, 0.0):.3f}" for k in stages) +
                         f" | {figures[mode]['gateway_cpu_s_per_inference'] * 1e3:.3f} |")
    rtf = {m: details[m]["gateway_real_time_factor"] for m in MODES if "gateway_real_time_factor" in details.get(m, {})}
    if rtf:
        lines += ["", "Gateway real-time factor per core (CPU seconds per second of audio): " +
                  ", ".join(f"{m} {v:.4f}" for m, v in rtf.items()) + "."]
    return lines + [""]


def markdown(result: dict) -> str:
    """bench.md: the machine, the settings and one table per modality."""
    lines = header("privedge pipeline benchmark", result["machine"], result["settings"])
    for modality in MODALITIES:
        if modality not in result:
            continue
        r, d = result[modality], result["details"][modality]
        lines += [f"## {modality} ({result['settings']['bundles'][modality]})", "",
                  *table_head("mode", *(UNITS[k] for k in KEYS))]
        for mode in MODES:
            if mode in r:
                flag = "" if d[mode]["fixed_load_kept_up"] else " (fell behind the fixed load)"
                lines.append(f"| {mode}{flag} | " + " | ".join(_fmt(k, r[mode][k]) for k in KEYS) + " |")
        ceil = d["runtime_ceiling"]
        rate = next(iter(d[m]["fixed_load_per_s"] for m in MODES if m in d))
        if modality == "scenes":
            lines += ["", "Frames answered per second at saturation: " + ", ".join(
                f"{mode} {d[mode]['inputs_per_s']:.1f}" for mode in MODES if mode in r) + " (an inference is a "
                "face's result, or the no-face answer of a frame without one; split only: the baselines "
                "have no face stage and would take each frame whole).",
                f"Runtime ceiling (the face stage's path per frame, one thread, {ceil['runtime']}: decode, "
                f"detection, crop, extractor): {r['runtime_ceiling_per_s']:.1f} frames/s. "
                f"Fixed offered load for latency: {rate:.1f} inferences/s.", ""]
        else:
            lines += ["", f"Runtime ceiling (extractor alone, one thread, {ceil['runtime']}, batch {ceil['batch']}, "
                          f"preprocessing included): {r['runtime_ceiling_per_s']:.1f} inferences/s. "
                          f"Fixed offered load for latency: {rate:.1f} inferences/s.", ""]
        lines += stages_markdown(modality, r, d)
    lines += NOTES
    if result.get("scaling"):
        from bench.scaling import scaling_markdown
        lines += scaling_markdown(result["scaling"])
    if result.get("cuts"):
        from bench.cuts import cuts_markdown
        lines += cuts_markdown(result["cuts"])
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge bench", description=__doc__.splitlines()[0])
    p.add_argument("--modality", choices=MODALITIES, action="append",
                   help="benchmark this input: image (face crops), speech, scenes (640x480 camera frames of "
                        "one face) (repeatable; default all three)")
    p.add_argument("--bundle", action="append", help="bundle directory, at most one per modality "
                                                     "(default: untrained bundles of the default architecture)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase (default 10)")
    p.add_argument("--out", required=True, help="output directory for bench.json and bench.md")
    p.add_argument("--mode", choices=MODES, action="append", help="only these modes (repeatable; default all)")
    p.add_argument("--window", type=int, default=128, help="inferences outstanding at saturation")
    p.add_argument("--latency-fraction", type=float, default=0.5,
                   help="fixed offered load as a fraction of the split saturation throughput")
    p.add_argument("--data", help="dataset root with orl/ and fsdd/ (default: the shared data beside the "
                                  "repository if present, else procedural inputs); 'none' for procedural")
    p.add_argument("--inputs", type=int, default=32, help="distinct inputs per modality, cycled")
    p.add_argument("--chunk-ms", type=float, default=250.0, help="audio chunk length, milliseconds")
    p.add_argument("--scaling", choices=("on", "off"), default="on",
                   help="also measure 1 vs 2 workers draining a pre-filled stream (default on)")
    p.add_argument("--cuts", choices=("on", "off"), default="on",
                   help="also measure the gateway's cost at each cut point next to local_only (default on)")
    p.add_argument("--warm-inputs", type=int, default=16, help="inputs sent and awaited before measuring")
    p.add_argument("--gateway-arg", action="append", default=[], help="extra privedge gateway flag (repeatable)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(message)s")
    from bench.loadgen import default_data_dir, load_inputs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modalities = tuple(args.modality or MODALITIES)
    modes = tuple(args.mode or MODES)
    data = None if args.data == "none" else (Path(args.data) if args.data else default_data_dir())
    settings = PipelineSettings(seconds=args.seconds, window=args.window,
                                latency_fraction=args.latency_fraction, warm_inputs=args.warm_inputs,
                                skip_s=min(1.0, args.seconds / 3), gateway_args=tuple(args.gateway_arg))
    from bench.loadgen import BUNDLE_MODALITY

    bundles = bundles_by_modality(args.bundle, tuple(dict.fromkeys(BUNDLE_MODALITY[m] for m in modalities)),
                                  out / "bundles")
    bundle_of = {m: bundles[BUNDLE_MODALITY[m]] for m in modalities}
    result: dict = {"machine": machine()}
    result["settings"] = {"seconds": args.seconds, "window": args.window, "latency_fraction": args.latency_fraction,
                          "inputs": args.inputs, "chunk_ms": args.chunk_ms, "modes": list(modes),
                          "gateway_args": list(args.gateway_arg), "torch_threads": 1,
                          # The services run with their own defaults unless --gateway-arg says otherwise.
                          "service_runtime": "default (auto: ONNX Runtime when the bundle carries .onnx)",
                          "bundles": {m: str(b) for m, b in bundle_of.items()}}
    print(setup_lines(result["machine"], result["settings"]), file=sys.stderr)
    result["details"] = {}
    t0 = time.monotonic()
    inputs = {}
    with Stack.running(out / "logs") as stack:
        for modality in modalities:
            inputs[modality] = load_inputs(modality, args.inputs, data, chunk_ms=args.chunk_ms)
            result["settings"].setdefault("sources", {})[modality] = inputs[modality].source
            log.info("== %s: %d inputs from %s, bundle %s", modality, len(inputs[modality]),
                     inputs[modality].source, bundle_of[modality])
            # The baselines serve frames whole (no face stage): scenes compare nothing there.
            these = tuple(m for m in modes if m == "split") if modality == "scenes" else modes
            if not these:
                log.info("== scenes: split mode only, not asked for: skipped")
                continue
            result[modality], result["details"][modality] = run_modality(stack, bundle_of[modality],
                                                                         inputs[modality], settings, these)
        if args.scaling == "on":
            from bench.scaling import worker_scaling
            log.info("== worker scaling")
            result["scaling"] = worker_scaling(stack, bundles, seconds=args.seconds, inputs=inputs)
        if args.cuts == "on":
            from bench.cuts import cut_points
            result["cuts"] = {}
            for modality in (m for m in modalities if m in bundles):  # crops and utterances
                log.info("== %s: gateway cost per cut point", modality)
                result["cuts"][modality] = cut_points(stack, modality, inputs[modality], settings, out / "bundles")
    result["settings"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "bench.md").write_text(md)
    print(md)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}", file=sys.stderr)
    return 0
