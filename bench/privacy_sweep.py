"""The privacy sweep of issue 6: raw input, the paper's simple / Siamese / advanced, each identity-protection
mechanism alone on top of advanced, and the private embedding (the best combination), on FSDD and on ORL
(unseen people), all measured by ``privedge audit``.

Trains each bundle it lacks with ``privedge train`` (reused when its directory already holds a manifest;
``--reuse DIR`` also looks for the paper's bundles of ``bench.audit_sweep`` there), then runs
``privedge audit --raw`` over the set's bundles, and checks the issue's targets.

    python -m bench.privacy_sweep --out runs/private [--sets fsdd orl] [--only NAME ...]
                                  [--reuse DIR] [--quick] [--no-cost] [--size full|small] [--train-threads 1]

Prints the machine, the settings and a markdown table; writes ``OUT/sweep.json``, ``OUT/sweep.md`` and per
set ``OUT/<set>/report.md``, ``metrics.json``, ``tradeoff.png``, ``reconstructions.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import report
from bench.audit_sweep import DEFAULT_DATA, SETS, audit_set, table, train_bundle
from models.nets import DEFAULT_CUT

CLASSES = {"fsdd": 10, "orl": 2}
# The private embedding's other cut (its own default is block4 for speech, block3 for images) and a second
# noise level: what each of the two contributes.
OTHER_CUT = {"fsdd": "block3", "orl": "block4"}
OTHER_NOISE = "0.35"


def configs(set_name: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (embedding, extra ``privedge train`` arguments). The paper's three take their defaults (cut
    after block3, PCA-8); each mechanism alone sits on top of the paper's advanced embedding at the setting
    the probes found best (models/embeddings.py); private is the default combination."""
    floor = str(CLASSES[set_name] - 1)
    return {
        "simple": ("simple", []),
        "siamese": ("siamese", []),
        "advanced": ("advanced", []),
        "agnostic": ("advanced", ["--agnostic-weight", "1"]),
        "adversary": ("advanced", ["--adversary-weight", "0.3"]),
        "noise": ("advanced", ["--noise", "0.5"]),
        "fewer-dims-int8": ("advanced", ["--dims", floor, "--dtype", "int8"]),
        "lda": ("advanced", ["--projection", "lda", "--dims", floor]),
        "cut-block4": ("advanced", ["--cut", "block4"]),
        "private": ("private", []),
        f"private-{OTHER_CUT[set_name]}": ("private", ["--cut", OTHER_CUT[set_name]]),
        f"private-noise{OTHER_NOISE}": ("private", ["--noise", OTHER_NOISE]),
    }


# The targets, checked per bundle.
TARGETS = {"accuracy_drop_max": 0.01, "top1_over_chance_max": 1.5, "log_rank_min": 0.9, "eer_min": 0.40,
           "bytes_max": 16}


def targets(m: dict, uncut: float | None) -> dict[str, bool | None]:
    """Which targets a bundle's audit metrics meet (None: not applicable)."""
    acc = m.get("primary_accuracy")
    return {
        "accuracy": None if acc is None or uncut is None else acc >= uncut - TARGETS["accuracy_drop_max"],
        "identity_top1": m["identity_top1"] <= TARGETS["top1_over_chance_max"] * m["identity_chance"],
        "log_rank": m["log_rank"] >= TARGETS["log_rank_min"],
        "eer": None if m.get("verification_eer") is None else m["verification_eer"] >= TARGETS["eer_min"],
        "bytes": m["feature_bytes"] <= TARGETS["bytes_max"],
    }


def find_bundle(name: str, set_name: str, roots: list[Path]) -> Path | None:
    """An existing bundle for ``name``: ours, or the paper's from bench.audit_sweep (``{set}-{emb}-{cut}``)."""
    for root in roots:
        for cand in (root / f"{set_name}-{name}", root / f"{set_name}-{name}-{DEFAULT_CUT}"):
            if (cand / "manifest.json").is_file():
                return cand
    return None


def targets_table(results: dict[str, dict], uncut: dict[str, float | None]) -> str:
    """Per bundle, each target met or not, with the figure beside the primary-label floor (what an attacker
    who knows only the true primary label gets: a target beyond it cannot be met without losing the task)."""
    lines = ["| set | bundle | acc within 1 pt of uncut | top-1 <= 1.5x chance | log-rank >= 0.9 | EER >= 40% "
             "| <= 16 bytes | top-1 / log-rank / EER (primary-label floor) |", "|" + "---|" * 8]
    mark = {True: "yes", False: "no", None: "—"}
    for set_name, metrics in results.items():
        for name, m in metrics.items():
            t = targets(m, uncut.get(set_name))
            figures = " / ".join(_pct(m.get(k)) for k in ("identity_top1", "log_rank", "verification_eer"))
            floors = " / ".join(_pct(m.get(k)) for k in ("identity_label_floor", "log_rank_label_floor",
                                                          "eer_label_floor"))
            cells = [*(mark[t[k]] for k in ("accuracy", "identity_top1", "log_rank", "eer", "bytes")),
                     f"{figures} ({floors})"]
            lines.append(f"| {set_name} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--only", nargs="+", default=None, help="bundle names to include, in this order (default: all)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--reuse", type=Path, action="append", default=[],
                   help="folder of already trained bundles to reuse (repeatable)")
    p.add_argument("--size", choices=("full", "small"), default="full")
    p.add_argument("--quick", action="store_true", help="audit with short attacker/decoder training")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the audit")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads of privedge train")
    p.add_argument("--no-cost", action="store_true",
                   help="skip the latency / memory figures (bench.audit_sweep has them for every cut)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-only", action="store_true", help="train the bundles, audit nothing")
    p.add_argument("--train-arg", action="append", default=[], metavar="SET:ARG",
                   help="extra privedge train argument for one set's bundles, e.g. fsdd:--analyzer-epochs=5")
    args = p.parse_args(argv)
    root = args.out / "bundles"
    root.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["reuse"] = [str(r) for r in args.reuse]
    machine_info = report.machine()
    print(report.setup_lines(machine_info, settings), flush=True)
    results, timing, uncut, commands = {}, {}, {}, {}
    for set_name in args.sets:
        modality, folder = SETS[set_name]
        data = args.data_dir / folder
        bundles, t_train = [], 0.0
        table_order = configs(set_name)
        for name in (args.only or table_order):  # --only also gives the order (train the most wanted first)
            embedding, extra = table_order[name]
            found = find_bundle(name, set_name, [root, *args.reuse])
            out = found or root / f"{set_name}-{name}"
            extra = extra + [a.split(":", 1)[1] for a in args.train_arg if a.startswith(f"{set_name}:")]
            t_train += train_bundle(out, modality, data, embedding, None, size=args.size,
                                    threads=args.train_threads, extra=extra)
            commands[f"{set_name}/{name}"] = f"privedge train --embedding {embedding} {' '.join(extra)}".strip()
            bundles.append(out)
            trained = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
            uncut.setdefault(set_name, trained.get("training", {}).get("uncut_accuracy"))
        if args.train_only:
            continue
        t = time.perf_counter()
        results[set_name] = audit_set(set_name, bundles, data, args.out / set_name, size=args.size,
                                      quick=args.quick, threads=args.threads, seed=args.seed,
                                      cost=not args.no_cost)
        timing[set_name] = {"train_s": round(t_train, 1), "audit_s": round(time.perf_counter() - t, 1)}
    if args.train_only:
        return 0
    md = table(results) + "\n\nUncut network (held-out primary accuracy): " + \
        ", ".join(f"{s} {_pct(a)}" for s, a in uncut.items()) + "\n\nTargets:\n\n" + targets_table(results, uncut)
    (args.out / "sweep.md").write_text(md + "\n")
    (args.out / "sweep.json").write_text(json.dumps(
        {"settings": settings, "machine": machine_info, "timing": timing, "uncut_accuracy": uncut,
         "commands": commands, "targets": TARGETS,
         "met": {s: {n: targets(m, uncut.get(s)) for n, m in ms.items()} for s, ms in results.items()},
         "results": results}, indent=2) + "\n")
    print(md)
    print(f"timing: {json.dumps(timing)}")
    return 0


def _pct(a: float | None) -> str:
    return "—" if a is None else f"{a:.3f}"


if __name__ == "__main__":
    sys.exit(main())
