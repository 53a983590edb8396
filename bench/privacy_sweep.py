"""The privacy sweep of issue 6: raw input, the paper's simple / Siamese / advanced, each identity-protection
mechanism alone on top of advanced, and the private embedding (the best combination), on FSDD and on ORL
(unseen people), all measured by ``privedge audit``.

Trains each bundle it lacks with ``privedge train`` (reused when its directory already holds a manifest;
``--reuse DIR`` also looks for the paper's bundles of ``bench.audit_sweep`` there), then runs
``privedge audit --raw`` over the set's bundles, and checks the issue's targets.

    python -m bench.privacy_sweep --out runs/private [--sets fsdd orl] [--only NAME ...]
                                  [--reuse DIR] [--quick] [--no-cost] [--repeat N] [--size full|small]
                                  [--train-threads 1]

Prints the machine, the settings and a markdown table; writes ``OUT/sweep.json``, ``OUT/sweep.md`` and per
set ``OUT/<set>/report.md``, ``metrics.json``, ``tradeoff.png``, ``reconstructions.png``. With ``--repeat N``
the private bundles are audited N times (other noise draws and attacker initialisations), and the table
of mean, min and max says how much of a figure is the luck of one draw.
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
# The private embedding's other cut (its own default is block4 for speech, block3 for images) and its
# other noise level (0.5 for speech, 0.35 for images): what each of the two contributes.
OTHER_CUT = {"fsdd": "block3", "orl": "block4"}
OTHER_NOISE = {"fsdd": "0.35", "orl": "0.5"}


def configs(set_name: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (embedding, extra ``privedge train`` arguments). The paper's three take their defaults (cut
    after block3, PCA-8); each mechanism alone sits on top of the paper's advanced embedding at the setting
    the probes found best (models/embedding_training.py); private is the default combination."""
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
        f"private-noise{OTHER_NOISE[set_name]}": ("private", ["--noise", OTHER_NOISE[set_name]]),
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


REPEATED = ("primary_accuracy", "identity_top1", "log_rank", "verification_eer")


def repeated_audits(set_name: str, bundles: list[Path], data: Path, out: Path, seeds: list[int],
                    args: argparse.Namespace) -> dict[str, list[dict]]:
    """``{bundle name: [metrics of each audit]}``: ``bundles`` audited once per seed, which draws the
    feature noise and initialises the attackers and the decoder anew (the raw input and cost left out)."""
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        metrics = audit_set(set_name, bundles, data, out / f"seed{seed}", size=args.size, quick=args.quick,
                            threads=args.threads, seed=seed, cost=False, raw=False)
        for name, m in metrics.items():
            runs.setdefault(name, []).append(m)
    return runs


def repeat_table(repeats: dict[str, dict[str, list[dict]]], uncut: dict[str, float | None]) -> str:
    """Mean [min, max] of each figure over the repeated audits, and the targets met in every one."""
    lines = ["| set | bundle | audits | primary acc | identity top-1 | log-rank | EER | met in every audit |",
             "|" + "---|" * 8]
    for set_name, runs in repeats.items():
        for name, ms in runs.items():
            cells = []
            for key in REPEATED:
                v = [m[key] for m in ms if m.get(key) is not None]
                cells.append("—" if not v else f"{sum(v) / len(v):.3f} [{min(v):.3f}, {max(v):.3f}]")
            met = [targets(m, uncut.get(set_name)) for m in ms]
            every = [k for k in met[0] if all(t[k] for t in met)]
            cells.append(", ".join(every) if len(every) < len(met[0]) else "all five")
            lines.append(f"| {set_name} | {name} | {len(ms)} | " + " | ".join(cells) + " |")
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
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="audit the private bundles N times in all (seeds SEED..SEED+N-1: other noise draws, "
                        "attackers and decoder) and report mean, min and max")
    p.add_argument("--train-arg", action="append", default=[], metavar="SET:ARG",
                   help="extra privedge train argument for one set's bundles, e.g. fsdd:--analyzer-epochs=5")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    root = args.out / "bundles"
    root.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["reuse"] = [str(r) for r in args.reuse]
    machine_info = report.machine()
    print(report.setup_lines(machine_info, settings), flush=True)
    results, timing, uncut, commands, repeats = {}, {}, {}, {}, {}
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
        again = [b for b in bundles if b.name.startswith(f"{set_name}-private")]
        if args.repeat > 1 and again:
            t = time.perf_counter()
            seeds = list(range(args.seed + 1, args.seed + args.repeat))
            more = repeated_audits(set_name, again, data, args.out / set_name / "repeats", seeds, args)
            repeats[set_name] = {n: [results[set_name][n], *ms] for n, ms in more.items()}
            timing[set_name]["repeat_s"] = round(time.perf_counter() - t, 1)
    if args.train_only:
        return 0
    summary = {"settings": settings, "machine": machine_info, "timing": timing, "uncut_accuracy": uncut,
               "commands": commands, "targets": TARGETS,
               "met": {s: {n: targets(m, uncut.get(s)) for n, m in ms.items()} for s, ms in results.items()},
               "results": results, "repeats": repeats}
    md = markdown(summary)
    (args.out / "sweep.md").write_text(md + "\n")
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(md)
    print(f"timing: {json.dumps(timing)}")
    return 0


def markdown(summary: dict) -> str:
    """sweep.md from the content of sweep.json: machine and settings, the audit table, the targets and,
    with --repeat, the spread over the repeated audits."""
    settings, results = summary["settings"], summary["results"]
    uncut, repeats = summary["uncut_accuracy"], summary["repeats"]
    lines = report.header("privedge privacy sweep: the paper's embeddings, each mechanism alone, private",
                          summary["machine"], settings)
    md = "\n".join(lines) + "\n" + table(results) + "\n\nUncut network (held-out primary accuracy): " + \
        ", ".join(f"{s} {_pct(a)}" for s, a in uncut.items()) + "\n\nTargets:\n\n" + \
        targets_table(results, uncut)
    if repeats:
        first, n = settings["seed"], settings["repeat"]
        md += f"\n\nOver {n} audits (seeds {first}-{first + n - 1}: feature noise, attackers and decoder " \
              "drawn anew each time), mean [min, max]:\n\n" + repeat_table(repeats, uncut)
    return md


def _pct(a: float | None) -> str:
    return "—" if a is None else f"{a:.3f}"


if __name__ == "__main__":
    sys.exit(main())
