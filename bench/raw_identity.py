"""How much the raw inputs give away, per protocol: identity and primary-label classifiers on raw inputs.

The "raw input" baseline of every privacy figure, and the evidence that the synthetic sets are worth
auditing on. Identity: trained on attack_train, scored on attack_test; primary: trained on train, scored
on test (models.data.probe: logistic regression on pooled pixels / log-mel and MFCC statistics).

    python -m bench.raw_identity --out runs/raw_identity [--size small] [--data-dir ../shared/data]

Prints the machine, the settings and a markdown table; writes ``OUT/raw_identity.json`` and
``OUT/raw_identity.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.report import header, machine, setup_lines, table_head
from models.data import load_protocol
from models.data.probe import raw_identity, raw_primary

DEFAULT_DATA = Path(os.environ.get("PRIVEDGE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def measure(modality: str, data: str, *, seed: int, size: str) -> dict:
    """Load one protocol and probe it; returns a JSON-ready dict."""
    t0 = time.perf_counter()
    protocol = load_protocol(modality, data, seed=seed, size=size)
    t1 = time.perf_counter()
    ident, prim = raw_identity(protocol, seed=seed), raw_primary(protocol, seed=seed)
    return {
        "protocol": protocol.name, "modality": modality, "task": protocol.task, "size": size,
        "n_train": len(protocol.train), "n_test": len(protocol.test),
        "n_attack_train": len(protocol.attack_train), "n_attack_test": len(protocol.attack_test),
        "attack_people": ident.n_classes,
        "identity_top1": ident.top1, "identity_chance": ident.chance,
        "primary_accuracy": prim.top1, "primary_chance": prim.chance,
        "load_s": round(t1 - t0, 2), "probe_s": round(time.perf_counter() - t1, 2),
    }


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`measure` results."""
    lines = table_head("protocol", "modality", "attack people", "identity top-1", "chance", "x chance",
                       "primary acc", "primary chance")
    for r in rows:
        lines.append(f"| {r['protocol']} | {r['modality']} | {r['attack_people']} | {r['identity_top1']:.3f} | "
                     f"{r['identity_chance']:.3f} | {r['identity_top1'] / r['identity_chance']:.1f} | "
                     f"{r['primary_accuracy']:.3f} | {r['primary_chance']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.raw_identity", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder for raw_identity.json / .md")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding fsdd/ and orl/")
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-real", action="store_true", help="synthetic sets only (no datasets needed)")
    args = ap.parse_args(argv)

    jobs = [("image", "synthetic"), ("speech", "synthetic")]
    if not args.skip_real:
        jobs += [("image", str(args.data_dir / "orl")), ("speech", str(args.data_dir / "fsdd"))]
    info = machine()
    settings = {"size": args.size, "seed": args.seed, "data_dir": str(args.data_dir), "skip_real": args.skip_real}
    print(setup_lines(info, settings), flush=True)
    rows = []
    for modality, data in jobs:
        rows.append(measure(modality, data, seed=args.seed, size=args.size))
        r = rows[-1]
        print(f"  {r['protocol']}: identity {r['identity_top1']:.3f} (chance {r['identity_chance']:.3f}), "
              f"load {r['load_s']} s, probe {r['probe_s']} s", flush=True)
    md = table(rows)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "raw_identity.json").write_text(
        json.dumps({"machine": info, "settings": settings, "results": rows}, indent=2) + "\n")
    head = header("privedge raw-input baseline: identity and primary label", info, settings)
    (args.out / "raw_identity.md").write_text("\n".join([*head, md]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
