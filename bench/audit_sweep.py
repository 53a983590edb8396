"""The privacy-audit sweep of issue 4: raw input, simple, Siamese and advanced at the default cut, and
simple at two other cuts, on FSDD and on ORL (unseen people).

Trains each bundle it lacks with ``privedge train`` (one subprocess per bundle, reused when its
directory already holds a manifest), then runs ``privedge audit --raw`` over the set's bundles.

    python -m bench.audit_sweep --out runs/audit_sweep [--sets fsdd orl] [--data-dir ../shared/data]
                                [--bundles DIR] [--size full|small] [--quick] [--threads N]
                                [--train-arg=--epochs=5 ...]

Prints the machine, the settings and a markdown table; writes ``OUT/sweep.json`` and ``OUT/sweep.md``,
and per set ``OUT/<set>/report.md``, ``metrics.json``, ``tradeoff.png``, ``reconstructions.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import report
from models.nets import DEFAULT_CUT

DEFAULT_DATA = Path(os.environ.get("PRIVEDGE_DATA",
                                   Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SETS = {"fsdd": ("speech", "fsdd"), "orl": ("image", "orl")}
OTHER_CUTS = ("block2", "block4")
# (embedding, cut) of each bundle, in table order.
SWEEP = [("simple", DEFAULT_CUT), ("siamese", DEFAULT_CUT), ("advanced", DEFAULT_CUT)] + \
        [("simple", cut) for cut in OTHER_CUTS]


def bundle_dir(root: Path, set_name: str, embedding: str, cut: str) -> Path:
    return root / f"{set_name}-{embedding}-{cut}"


def train_bundle(out: Path, modality: str, data: Path, embedding: str, cut: str | None, *, size: str,
                 threads: int, extra: list[str]) -> float:
    """``privedge train`` into ``out`` unless it already holds a bundle; returns seconds spent.
    ``cut`` None: the embedding's own default cut."""
    if (out / "manifest.json").is_file():
        print(f"reusing {out}", flush=True)
        return 0.0
    cmd = [sys.executable, "-m", "privedge.cli", "train", "--modality", modality, "--data", str(data),
           "--embedding", embedding, *(["--cut", cut] if cut else []), "--size", size,
           "--threads", str(threads), "--no-progress", "--out", str(out), *extra]
    print("+ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def audit_set(set_name: str, bundles: list[Path], data: Path, out: Path, *, size: str, quick: bool,
              threads: int, seed: int, cost: bool = True, raw: bool = True, attacks: str = "basic", inversion: bool = True) -> dict:
    """``privedge audit`` over ``bundles`` (``raw``: the raw input too; ``cost``: with latency and memory;
    ``attacks``: "basic" or "all"; ``inversion``: with the inversion decoder); returns its metrics.json."""
    cmd = [sys.executable, "-m", "privedge.cli", "audit", *(["--raw"] if raw else []), "--data", str(data),
           "--size", size, "--out", str(out), "--threads", str(threads), "--seed", str(seed),
           "--attacks", attacks]
    for b in bundles:
        cmd += ["--bundle", str(b)]
    if quick:
        cmd.append("--quick")
    if not cost:
        cmd.append("--no-cost")
    if not inversion:
        cmd.append("--no-inversion")
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / "metrics.json").read_text())


def _f(v, fmt=".3f") -> str:
    return "—" if v is None else format(v, fmt)


def table(results: dict[str, dict]) -> str:
    """One markdown table over all sets."""
    lines = ["| set | bundle | embedding | cut | bytes | primary acc | identity top-1 (attacker) | chance "
             "| 1-NN error | log-rank | EER | SSIM | PSNR dB |", "|" + "---|" * 13]
    for set_name, metrics in results.items():
        for name, m in metrics.items():
            lines.append(
                f"| {set_name} ({m['protocol']}) | {name} | {m['embedding']} | {m['cut'] or '—'} "
                f"| {m['feature_bytes']} | {_f(m['primary_accuracy'])} "
                f"| {m['identity_top1']:.3f} ({m['best_attacker']}) | {m['identity_chance']:.3f} "
                f"| {m['nn_error']:.3f} | {m['log_rank']:.3f} | {_f(m['verification_eer'])} "
                f"| {m['ssim']:.3f} | {_f(m['psnr_db'], '.1f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--bundles", type=Path, default=None,
                   help="where bundles are trained / reused (default OUT/bundles)")
    p.add_argument("--size", choices=("full", "small"), default="full")
    p.add_argument("--quick", action="store_true", help="audit with short attacker/decoder training")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the audit")
    p.add_argument("--train-threads", type=int, default=2, help="torch threads of privedge train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-arg", action="append", default=[],
                   help="extra argument for every privedge train, e.g. --train-arg=--epochs=5")
    args = p.parse_args(argv)
    root = args.bundles or args.out / "bundles"
    root.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    machine_info = report.machine()
    print(report.setup_lines(machine_info, settings), flush=True)
    results, timing = {}, {}
    for set_name in args.sets:
        modality, folder = SETS[set_name]
        data = args.data_dir / folder
        bundles, t_train = [], 0.0
        for embedding, cut in SWEEP:
            out = bundle_dir(root, set_name, embedding, cut)
            t_train += train_bundle(out, modality, data, embedding, cut, size=args.size,
                                    threads=args.train_threads, extra=args.train_arg)
            bundles.append(out)
        t = time.perf_counter()
        results[set_name] = audit_set(set_name, bundles, data, args.out / set_name, size=args.size,
                                      quick=args.quick, threads=args.threads, seed=args.seed)
        timing[set_name] = {"train_s": round(t_train, 1), "audit_s": round(time.perf_counter() - t, 1)}
    md = table(results)
    (args.out / "sweep.md").write_text(md + "\n")
    (args.out / "sweep.json").write_text(json.dumps(
        {"settings": settings, "machine": machine_info, "timing": timing, "results": results},
        indent=2) + "\n")
    print(md)
    print(f"timing: {json.dumps(timing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
