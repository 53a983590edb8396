"""The stronger attacks of issue 17 on the default (private) bundles of FSDD and ORL, beside the raw input.

Trains each set's default bundle it lacks with ``privedge train`` (reused when its directory already
holds a manifest), runs ``privedge audit --raw --attacks all --no-cost --no-inversion`` on it (reused when ``OUT/<set>/``
already holds such an audit), and gathers the stronger attacks' tables of every set's report into one file.

    python -m bench.attacks --out runs/attacks [--sets fsdd orl] [--data-dir ../shared/data]
                            [--bundles DIR] [--quick] [--threads N]

Prints the machine and the settings; writes ``OUT/attacks.md`` and ``OUT/attacks.json`` (per set and bundle:
the basic headline figures, ``attacks`` and ``bound``), and per set the audit's own ``OUT/<set>/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import report
from bench.audit_sweep import DEFAULT_DATA, SETS, audit_set, train_bundle

SECTION = "## Stronger attacks"
KEYS = ("primary_accuracy", "identity_top1", "identity_chance", "best_attacker", "verification_eer",
        "identity_label_floor", "eer_label_floor", "dims", "feature_bytes", "attacks", "bound")


def stronger_section(report_md: str) -> str:
    """The stronger attacks' part of an audit's report.md (up to the next top-level section)."""
    start = report_md.index(SECTION)
    end = report_md.find("\n## ", start + len(SECTION))
    return report_md[start:end if end > 0 else None].strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--bundles", type=Path, default=None, help="where bundles are trained / reused (default OUT/bundles)")
    p.add_argument("--quick", action="store_true", help="short training and few resamples: smoke runs only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = args.bundles or args.out / "bundles"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    machine_info = report.machine()
    print(report.setup_lines(machine_info, settings), flush=True)
    results, timing, sections = {}, {}, []
    for set_name in args.sets:
        modality, folder = SETS[set_name]
        data = args.data_dir / folder
        bundle = root / f"{set_name}-private"
        t_train = train_bundle(bundle, modality, data, "private", None, size="full", threads=args.threads, extra=[])
        t = time.perf_counter()
        done = args.out / set_name / "metrics.json"
        if done.is_file() and all(m.get("attacks") for m in json.loads(done.read_text()).values()):
            print(f"reusing the audit in {done.parent}", flush=True)      # an interrupted run goes on
            metrics = json.loads(done.read_text())
        else:
            metrics = audit_set(set_name, [bundle], data, args.out / set_name, size="full", quick=args.quick,
                                threads=args.threads, seed=args.seed, cost=False, attacks="all",
                                inversion=False)
        timing[set_name] = {"train_s": round(t_train, 1), "audit_s": round(time.perf_counter() - t, 1)}
        results[set_name] = {name: {k: m.get(k) for k in KEYS} for name, m in metrics.items()}
        section = stronger_section((args.out / set_name / "report.md").read_text())
        sections += [f"## {set_name} ({next(iter(metrics.values()))['protocol']})", "",
                     section.replace("### ", "#### ").replace(SECTION, "### Stronger attacks"), ""]
    lines = report.header("privedge stronger attacks (issue 17): the default bundles beside the raw input",
                          machine_info, settings)
    lines += [f"Timing (s): {json.dumps(timing)}", ""] + sections
    (args.out / "attacks.md").write_text("\n".join(lines) + "\n")
    (args.out / "attacks.json").write_text(json.dumps(
        {"settings": settings, "machine": machine_info, "timing": timing, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out / 'attacks.md'}; timing {json.dumps(timing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
