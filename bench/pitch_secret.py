"""What a home's secret pitch-shift range adds (issue 6, mechanism 6), measured on a speech bundle.

The gateway may replace the bundle's pitch-shift range by the home's own (``pitch_shift`` in its config,
never sent). For each home range this measures, on the protocol's held-out utterances shifted that way:
the primary accuracy of the bundle's analyzer, and the identity attackers of ``privedge audit`` (linear,
mlp, 1-NN) trained on features of the attacker's labelled utterances made with
- the home's range: an attacker who knows the secret (the worst case, no gain from the secret);
- the bundle's range: an attacker who knows only what the bundle says;
- a wide range (0-12 semitones): an attacker who guards against any secret by covering all of them.
The gain of the secret is the drop from the first attacker's top-1 to the best of the other two.

    python -m bench.pitch_secret --bundle DIR --out runs/pitch [--data ../shared/data/fsdd]
                                 [--homes 0,2 2,5 5,8] [--size full|small] [--quick]

Prints the machine, the settings and a markdown table; writes ``OUT/pitch_secret.json`` and
``OUT/pitch_secret.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.audit_sweep import DEFAULT_DATA
from bench.report import header, machine, setup_lines, table_head
from models.audit.attackers import TrainSettings
from models.audit.measures import identity_measures
from models.bundle import load_analyzer, load_extractor, read_manifest
from models.data import load_protocol

WIDE = (0.0, 12.0)


def parse_range(text: str) -> tuple[float, float]:
    """``"LO,HI"`` semitones, 0 <= LO <= HI <= 12."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a range is LO,HI in semitones, got {text!r}") from None
    if not 0 <= lo <= hi <= 12:
        raise argparse.ArgumentTypeError(f"a range must satisfy 0 <= LO <= HI <= 12, got {text!r}")
    return lo, hi


def features(bundle: Path, samples, shift: tuple[float, float], seed: int) -> np.ndarray:
    """Released features of ``samples`` through the bundle's extractor with pitch-shift range ``shift``."""
    torch.manual_seed(seed)      # the bundle's feature noise
    ext = load_extractor(bundle, rng=np.random.default_rng(seed), shift_semitones=shift)
    return ext.extract_raw([(w, samples.rate) for w in samples.x])


def measure(bundle: Path, data: Path, homes: list[tuple[float, float]], *, size: str, quick: bool,
            seed: int) -> dict:
    manifest = read_manifest(bundle)
    if manifest["modality"] != "speech":
        raise ValueError(f"{bundle} is a {manifest['modality']} bundle: the pitch shift is for speech")
    public = tuple(manifest["input"]["shift_semitones"])
    p = load_protocol("speech", str(data), seed=seed, size=size)
    settings = TrainSettings(max_epochs=30, patience=5, refit=False) if quick else TrainSettings()
    analyzer = load_analyzer(bundle)
    cache: dict[tuple[float, float], np.ndarray] = {}

    def attack_train(shift: tuple[float, float]) -> np.ndarray:
        if shift not in cache:
            cache[shift] = features(bundle, p.attack_train, shift, seed + 1)
        return cache[shift]

    rows = []
    for home in tqdm(homes, desc="home ranges", unit="range", file=sys.stderr):
        probs = analyzer.analyze_batch(features(bundle, p.test, home, seed + 2))
        test = features(bundle, p.attack_test, home, seed + 3)
        row = {"home": list(home), "primary_accuracy": float((probs.argmax(1) == p.test.primary).mean())}
        for who, shift in (("knows_secret", home), ("bundle_range", public), ("wide_range", WIDE)):
            m = identity_measures(attack_train(shift), p.attack_train.identity, test, p.attack_test.identity,
                                  settings=settings, seed=seed)
            row[who] = {"top1": m.top1, "attacker": m.best, "log_rank": m.log_rank, "chance": m.chance_top1}
        row["secret_gain_top1"] = row["knows_secret"]["top1"] - max(row["bundle_range"]["top1"],
                                                                    row["wide_range"]["top1"])
        rows.append(row)
    return {"bundle": str(bundle), "model": manifest["model"], "embedding": manifest["embedding"],
            "public_range": list(public), "protocol": p.name, "rows": rows}


def markdown(result: dict, machine_info: dict, settings: dict) -> str:
    lines = header("privedge: a home's secret pitch-shift range", machine_info, settings) + [
        f"Bundle `{result['bundle']}` ({result['embedding']}, model {result['model']}), public range "
        f"±{result['public_range'][0]:g}-{result['public_range'][1]:g} semitones, protocol {result['protocol']}. "
        "Identity top-1 of the best attacker (chance "
        f"{result['rows'][0]['knows_secret']['chance']:.3f}) by what the attacker's training features used.", ""]
    lines += table_head("home range (semitones)", "primary acc", "attacker knows the range",
                        "attacker uses the bundle's range", "attacker covers 0-12", "gain of the secret")
    for r in result["rows"]:
        cell = lambda k: f"{r[k]['top1']:.3f} ({r[k]['attacker']})"  # noqa: E731
        lines.append(f"| ±{r['home'][0]:g}-{r['home'][1]:g} | {r['primary_accuracy']:.3f} | {cell('knows_secret')} "
                     f"| {cell('bundle_range')} | {cell('wide_range')} | {r['secret_gain_top1']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "fsdd")
    ap.add_argument("--homes", nargs="+", type=parse_range, default=[(0.0, 2.0), (2.0, 5.0), (5.0, 8.0)])
    ap.add_argument("--size", choices=("full", "small"), default="full")
    ap.add_argument("--quick", action="store_true", help="short attacker training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    machine_info = machine()
    print(setup_lines(machine_info, settings), flush=True)
    t0 = time.perf_counter()
    result = measure(args.bundle, args.data, args.homes, size=args.size, quick=args.quick, seed=args.seed)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(result, machine_info, settings)
    (args.out / "pitch_secret.md").write_text(md)
    (args.out / "pitch_secret.json").write_text(json.dumps(
        {"machine": machine_info, "settings": settings, **result}, indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
