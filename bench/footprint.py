"""The home side's footprint: gateway peak memory under load, start-up time, and the home install's size.

    python -m bench.footprint [--seconds 10] [--starts 5] [--runtime onnx --runtime torch]
                              [--images crops --images scenes] [--out DIR]

For each runtime, a ``privedge gateway`` process serves both default bundles (image and speech) against a
local mosquitto and Redis with one worker; the load is the pipeline benchmark's saturation load on both
modalities at once (each load generator keeps ``window`` inferences outstanding) for ``seconds``, from the
real ORL and FSDD inputs when they are beside the repository. Readings:

- *peak RSS*: the gateway's VmHWM after the load (``/proc/PID/status``), MiB, once with face crops as the
  image load and once with 640x480 scenes of one face (``--images``), which the face stage searches;
- *start to online*: from starting the process to the retained ``online`` on its status topic
  (``schemas.names.Names.gateway_status``), bundles on disk, median and worst of ``starts`` fresh starts;
- *training stack loaded*: whether torch, librosa or numba is mapped into the gateway (``/proc/PID/maps``).

The install sizes are the bytes on disk of every file that each distribution in the dependency closure of
``pip install .`` (the home) and ``pip install '.[train,test]'`` (everything) installed in this environment
(their ``RECORD`` lists), read from ``pyproject.toml``; privedge's own sources and the interpreter are not
counted; ``--venv`` also installs the home side into a throwaway venv and reports its ``du``. A gateway
container image is the base image (python:3.11-slim) plus the home install.

Without ``--bundle`` the bundles are untrained ones at the default (private) settings' cut points and
dimensions: the same networks and compute as the trained defaults, random weights. Writes
``OUT/footprint.json`` and ``OUT/footprint.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from importlib import metadata
from pathlib import Path

from bench.loadgen import LoadGenerator, ResultListener, default_data_dir, load_inputs
from bench.procs import Service
from bench.report import header, machine, setup_lines, table_head

log = logging.getLogger("bench.footprint")

REPO = Path(__file__).resolve().parents[1]
TRAINING_LIBRARIES = ("libtorch", "librosa", "numba", "llvmlite")
DEFAULT_SHAPES = {"image": {"cut": "block3", "dims": 1, "noise_std": 0.35},
                  "speech": {"cut": "block4", "dims": 9, "noise_std": 0.5}}
"""The default (private) embedding's cut and dimensions per modality (models.embedding_training.PRIVATE_DEFAULTS,
LDA to classes - 1 dimensions)."""


def _requirement_name(req: str) -> tuple[str, str | None]:
    """'name[extra]==1.0 ; marker' -> (normalised name, marker or None)."""
    spec, _, marker = req.partition(";")
    name = re.match(r"\s*([A-Za-z0-9_.\-]+)", spec).group(1)
    return re.sub(r"[-_.]+", "-", name).lower(), marker.strip() or None


def closure(requirements: list[str]) -> dict[str, int]:
    """Installed distributions needed by ``requirements`` (markers for extras are skipped), each with the
    bytes on disk of the files it installed."""
    seen: dict[str, int] = {}
    todo = [_requirement_name(r)[0] for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            log.warning("%s is not installed here: not counted", name)
            seen[name] = 0
            continue
        size = 0
        for f in dist.files or []:
            p = Path(dist.locate_file(f))
            if p.is_file():
                size += p.stat().st_size
        seen[name] = size
        for req in dist.requires or []:
            sub, marker = _requirement_name(req)
            if marker is None or "extra" not in marker:
                if marker is None or _marker_holds(marker):
                    todo.append(sub)
    return seen


def _marker_holds(marker: str) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate({"extra": ""})


def install_sizes(pyproject: Path = REPO / "pyproject.toml") -> dict:
    """Megabytes on disk of the home install and of the full one (train + test extras)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    base = list(project["dependencies"])
    extras = project.get("optional-dependencies", {})
    home = closure(base)
    full = closure(base + extras.get("train", []) + extras.get("test", []))
    mb = lambda sizes: round(sum(sizes.values()) / 1e6, 1)  # noqa: E731
    largest = sorted(home.items(), key=lambda kv: -kv[1])[:6]
    return {"home_mb": mb(home), "full_mb": mb(full), "home_distributions": len(home),
            "full_distributions": len(full),
            "home_largest_mb": {k: round(v / 1e6, 1) for k, v in largest},
            "missing": sorted(k for k, v in full.items() if v == 0)}


def venv_size(work: Path) -> dict:
    """A throwaway virtual environment with ``pip install .`` of this checkout (from the configured package
    index): its size on disk (``du``), pip and setuptools included, and whether torch is in it."""
    import subprocess

    venv = work / "home-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(REPO)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    size = int(subprocess.run(["du", "-sb", str(venv)], check=True, capture_output=True, text=True)
               .stdout.split()[0])
    torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    return {"venv_mb": round(size / 1e6, 1), "venv_has_torch": torch}


def default_bundles(work: Path) -> dict[str, Path]:
    from models import signing
    from models.bundle import make_untrained_bundle

    signing.local_provider(work)
    out = {}
    for modality, shape in DEFAULT_SHAPES.items():
        out[modality] = work / f"default-{modality}"
        make_untrained_bundle(out[modality], modality, **shape)
    return out


def _mapped_training_libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({lib for lib in TRAINING_LIBRARIES if lib in maps})


def gateway_args(stack, bundles: dict[str, Path], gw: str, runtime: str, prefix: str) -> list[str]:
    return ["--broker", stack.mqtt.url, "--redis", stack.redis.url, "--id", gw, "--prefix", prefix,
            "--runtime", runtime, *(a for b in bundles.values() for a in ("--bundle", str(b)))]


def time_starts(stack, bundles: dict[str, Path], runtime: str, starts: int, logs: Path) -> list[float]:
    """Seconds from process start to the retained ``online``, for ``starts`` fresh gateways."""
    took = []
    for i in range(starts):
        gw, prefix = f"start{runtime}{i}", f"fp{runtime}{i}"
        listener = ResultListener(stack.mqtt.port, prefix, f"fp-start-{runtime}-{i}")
        try:
            t0 = time.monotonic()
            svc = Service("gateway", gateway_args(stack, bundles, gw, runtime, prefix), logs / f"start-{gw}.log")
            try:
                if not listener.wait_online(gw, 120):
                    raise RuntimeError(f"gateway {gw} never came online: {svc.tail()}")
                took.append(time.monotonic() - t0)
            finally:
                svc.stop()
        finally:
            listener.close()
    return took


def under_load(stack, bundles: dict[str, Path], runtime: str, seconds: float, window: int, logs: Path,
               images: str = "crops") -> dict:
    """Peak RSS of a gateway serving both modalities at saturation for ``seconds``; ``images``: the image
    load is face crops (``crops``), or 640x480 camera frames of one face each (``scenes``), which the face
    stage searches."""
    gw, prefix = f"load{runtime}{images}", f"fpload{runtime}{images}"
    data = default_data_dir()
    inputs = {m: load_inputs("scenes" if m == "image" and images == "scenes" else m, 32, data) for m in bundles}
    listener = ResultListener(stack.mqtt.port, prefix, f"fp-load-{runtime}")
    gateway = Service("gateway", gateway_args(stack, bundles, gw, runtime, prefix), logs / f"{gw}.log")
    worker = Service("worker", ["--redis", stack.redis.url, "--prefix", prefix, "--runtime", "onnx", "--block-ms",
                                "20", *(a for b in bundles.values() for a in ("--bundle", str(b)))],
                     logs / f"worker-{runtime}.log")
    gens: dict[str, LoadGenerator] = {}
    try:
        if not listener.wait_online(gw, 120):
            raise RuntimeError(f"gateway never came online: {gateway.tail()}")
        gens = {m: LoadGenerator(inputs[m], stack.mqtt.url, prefix, f"{m}-dev", listener) for m in bundles}
        for g in gens.values():  # both services warm, the worker's group made
            g.send_one()
        for g in gens.values():
            if not g.wait_results(1, 120):
                raise RuntimeError(f"no first result: {gateway.tail()}\n{worker.tail()}")
        runs: dict[str, dict] = {}
        threads = [threading.Thread(target=lambda m=m, g=g: runs.__setitem__(m, g.closed_loop(seconds, window)))
                   for m, g in gens.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"peak_rss_mb": round(gateway.peak_rss_mb(), 1), "images": images,
                "throughput_per_s": {m: round(r["throughput_per_s"], 1) for m, r in runs.items()},
                "training_libraries_mapped": _mapped_training_libraries(gateway.pid),
                "inputs": {m: Path(inputs[m].source).name for m in inputs}}  # orl, fsdd or procedural
    finally:
        for g in gens.values():
            g.close()
        listener.close()
        gateway.stop()
        worker.stop()


def markdown(result: dict) -> str:
    lines = header("privedge home footprint", result["machine"], result["settings"])
    lines += table_head("runtime", "image load", "peak RSS MiB (both bundles, under load)",
                        "start to online s (median / worst)", "results/s image / speech", "training stack mapped")
    for runtime, r in result["runtimes"].items():
        starts = r["start_to_online_s"]
        for load in r["loads"]:
            tp = load["throughput_per_s"]
            lines.append(f"| {runtime} | {load['images']} | {load['peak_rss_mb']:.1f} | "
                         f"{statistics.median(starts):.2f} / {max(starts):.2f} | {tp.get('image', 0):.1f} / "
                         f"{tp.get('speech', 0):.1f} | {', '.join(load['training_libraries_mapped']) or 'none'} |")
    s = result["install"]
    lines += ["", *table_head("install", "size on disk MB", "distributions"),
              f"| home (`pip install .`) | {s['home_mb']:.1f} | {s['home_distributions']} |",
              f"| everything (`pip install '.[train,test]'`) | {s['full_mb']:.1f} | {s['full_distributions']} |",
              *([f"| home, a fresh venv with `pip install .` (`du`, pip and setuptools included"
                  f"{', torch in it' if s['venv_has_torch'] else ', no torch'}) | {s['venv_mb']:.1f} | |"]
                if "venv_mb" in s else []),
              "", "Largest distributions of the home install (MB): "
              + ", ".join(f"{k} {v:.1f}" for k, v in s["home_largest_mb"].items()) + ".", "",
              "A gateway container image (the Dockerfile's `gateway` stage) is python:3.11-slim plus the home "
              "install: estimated from the size above, no Docker engine measured it.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.pipeline import Stack
    from models.bundle import read_manifest

    p = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", action="append", help="a bundle to serve (default: untrained default ones)")
    p.add_argument("--runtime", action="append", choices=("onnx", "torch", "auto"),
                   help="gateway runtimes to measure (default: onnx, then torch for comparison)")
    p.add_argument("--seconds", type=float, default=10.0, help="saturation load per runtime (default 10)")
    p.add_argument("--window", type=int, default=128, help="inferences outstanding per modality (default 128)")
    p.add_argument("--images", action="append", choices=("crops", "scenes"),
                   help="image loads to measure: face crops, or 640x480 scenes the face stage searches (default both)")
    p.add_argument("--starts", type=int, default=5, help="fresh starts timed per runtime (default 5)")
    p.add_argument("--venv", action="store_true",
                   help="also pip-install the home side into a throwaway venv and report its size (needs the index)")
    p.add_argument("--out", default="footprint-results", help="folder for footprint.json and footprint.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtimes = args.runtime or ["onnx", "torch"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="privedge-footprint-") as tmp:
        work = Path(tmp)
        bundles = ({read_manifest(b)["modality"]: Path(b) for b in args.bundle} if args.bundle
                   else default_bundles(work))
        settings = {"seconds": args.seconds, "window": args.window, "starts": args.starts, "runtimes": runtimes,
                    "bundles": {m: str(b) if args.bundle else f"untrained default ({DEFAULT_SHAPES[m]})"
                                for m, b in bundles.items()}}
        info = machine()
        print(setup_lines(info, settings), flush=True)
        result = {"machine": info, "settings": settings, "runtimes": {}, "install": install_sizes()}
        if args.venv:
            result["install"].update(venv_size(work))
        with Stack.running(work / "logs") as stack:
            for runtime in runtimes:
                starts = time_starts(stack, bundles, runtime, args.starts, work / "logs")
                loads = [under_load(stack, bundles, runtime, args.seconds, args.window, work / "logs", images)
                         for images in (args.images or ["crops", "scenes"]) if images == "crops" or "image" in bundles]
                result["runtimes"][runtime] = {"start_to_online_s": [round(t, 3) for t in starts], "loads": loads}
                log.info("%s: %s", runtime, result["runtimes"][runtime])
    (out / "footprint.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "footprint.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
