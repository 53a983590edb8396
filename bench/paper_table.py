"""The paper's table on LFW (issue 17, item 1): gender accuracy of the uncut network and of the simple,
Siamese and advanced embeddings at three cut points, on people the networks never saw.

    python -m bench.paper_table --out docs/results/privacy [--work runs/paper-table] [--data-root DIR]
        [--size small|full] [--epochs N] [--siamese-epochs N] [--analyzer-epochs N]
        [--cuts block2,block3,block4] [--embeddings simple,siamese,advanced] [--detector blazeface]
        [--seed 0] [--threads 1] [--whitebox]

Every network trains on LFW detector crops (``privedge train --crop-faces``): the face the gateway's face
stage finds in each photograph, cut as the gateway cuts it, since that is what the gateway feeds the
extractor. The uncut network is the primary network every embedding starts from (trained once, cached),
measured whole; each embedding row is that network cut, fine-tuned and measured through its analyzer.
The paper (Osia et al., VGG-16 on IMDB-Wiki) reports about 93-94% gender accuracy for all three
embeddings.

With ``--whitebox`` each bundle also faces the white-box inversion attacker of the audit
(:mod:`models.audit.whitebox`: the extractor's weights, an input optimised until its features match the
release) on a seeded sample of the attack people's crops: how much of the face each cut and embedding
lets the weights give back.

Size knob: ``--size small`` (the people with 10 photos or more, 10 each, split into model and attack
halves) and the epoch options bound the run on a shared machine; the markdown's header says which ran.
Writes ``OUT/lfw-paper-table.json`` and ``.md``; bundles go to ``--work`` and are reused when a previous
run left them there with the same settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.detected_crops import default_data_root, portable, trained
from bench.report import header, machine, setup_lines, table_head
from models.faces import DEFAULT_KIND, DEFAULT_PARAMS

EMBEDDINGS = ("simple", "siamese", "advanced")
CUTS = ("block2", "block3", "block4")
GAP_POINTS = 1.0
"""Issue 17's bound: each embedding's gender accuracy within 1 point of the uncut network's."""


def train_argv(args, embedding: str, cut: str) -> list[str]:
    """``privedge train`` arguments of one table cell."""
    argv = ["--modality", "image", "--data", str(Path(args.data_root) / "lfw"), "--crop-faces", args.detector,
            "--embedding", embedding, "--cut", cut, "--size", args.size, "--seed", str(args.seed),
            "--threads", str(args.threads)]
    for flag, value in (("--epochs", args.epochs), ("--siamese-epochs", args.siamese_epochs),
                        ("--analyzer-epochs", args.analyzer_epochs)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def whitebox_match(bundle: Path, protocol, seed: int) -> dict:
    """The white-box attacker's :func:`reconstruction_match` on a seeded sample of ``attack_test``."""
    from models.audit.whitebox import WhiteBoxSettings, invert_whitebox, reconstruction_match
    from models.bundle import load_extractor
    from models.release import decode

    ext = load_extractor(bundle, rng=np.random.default_rng(seed))
    spec = ext.manifest["feature"]

    def released(x: np.ndarray) -> np.ndarray:
        return decode(ext.extract_batch(list(x)).reshape(len(x), -1), spec)

    w = WhiteBoxSettings()
    held = np.concatenate([protocol.attack_train.x, protocol.train.x]).astype(np.float32)
    gallery, ids = np.asarray(protocol.attack_test.x, np.float32), protocol.attack_test.identity
    pick = np.sort(np.random.default_rng([seed, 29]).permutation(len(gallery))[:w.max_inputs])
    torch.manual_seed(seed)
    scale = released(np.asarray(protocol.attack_train.x, np.float32)).std(axis=0)
    rebuilt = invert_whitebox(ext.module, released(gallery[pick]), held.mean(axis=0), scale, settings=w, seed=seed)
    return reconstruction_match(rebuilt.reconstructions, gallery[pick], ids[pick], gallery, ids, others=w.others,
                                seed=seed)


def rows_of(runs: list[dict]) -> tuple[dict, list[dict]]:
    """(the uncut network's row, one row per embedding and cut) from the runs' metrics.json."""
    first = runs[0]
    uncut = {"accuracy": first["training"]["uncut_accuracy"], "n_train": first["n_train"], "n_test": first["n_test"],
             "face_crops": first["face_crops"], "epochs": first["epochs"][0]}
    rows = []
    for m in runs:
        gap = round((m["primary_accuracy"] - uncut["accuracy"]) * 100, 2)
        rows.append({"embedding": m["embedding"], "cut": m["cut"], "dims": m["dims"],
                     "gender_accuracy": m["primary_accuracy"], "points_vs_uncut": gap,
                     "within_1_point": gap >= -GAP_POINTS, "feature_bytes": m["feature_bytes"],
                     "extractor_macs": m["extractor_macs"], "epochs": m["epochs"], "seconds": m["seconds"],
                     "whitebox": m.get("whitebox")})
    return uncut, rows


def markdown(res: dict) -> str:
    u = res["uncut"]
    c = u["face_crops"] or {}
    size = ("small: the people with 10 photos or more, their first 10 each" if res["settings"]["size"] == "small"
            else "full: every labelled person, at most 20 photos each")
    lines = [*header("The paper's table on LFW: gender accuracy on unseen people", res["machine"], res["settings"]),
             f"**Run size: {size}; epochs primary / Siamese / analyzer as in each row (the embedding defaults "
             f"unless the settings above name them).** Protocol `lfw-unseen-detected`: people split into model "
             f"and attack halves by seed {res['settings']['seed']}; the networks train on {u['n_train']} crops "
             f"of the model half and are tested on {u['n_test']} crops of the other half.", "",
             f"Inputs: detector crops, the gateway's face stage (`{res['detector']}` {res['detector_params']}, "
             f"`models.faces.crop_face`): {c.get('cropped', '?')} of {c.get('frames', '?')} frames gave a face, "
             f"{c.get('missed', '?')} left out. Command: `{res['command']}`.", "",
             *table_head("network", "cut", "dims", "gender accuracy", "vs uncut (points)", "feature bytes",
                         "extractor MMACs", "epochs", "seconds*"),
             f"| uncut | — | — | {u['accuracy']:.4f} | — | — (runs whole) | — | {u['epochs']} | — |"]
    for r in res["rows"]:
        lines.append(f"| {r['embedding']} | {r['cut']} | {r['dims'] or '—'} | {r['gender_accuracy']:.4f} | "
                     f"{r['points_vs_uncut']:+.1f} | {r['feature_bytes']:,} | {r['extractor_macs'] / 1e6:.2f} | "
                     f"{'/'.join(str(e) for e in r['epochs'])} | {r['seconds']:.0f} |")
    met = [f"{r['embedding']} {r['cut']}" for r in res["rows"] if r["within_1_point"]]
    lines += ["", "*wall seconds of the training; the primary network is trained once and cached, so the first "
              "row paid for it.", "",
              f"Within {GAP_POINTS:.0f} point of the uncut network: {len(met)} of {len(res['rows'])} "
              f"({', '.join(met) or 'none'}). Paper (IMDB-Wiki, "
              "VGG-16): about 93-94% for all three embeddings."]
    return "\n".join([*lines, *_whitebox_lines(res["rows"]), ""])


def _whitebox_lines(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("whitebox")]
    if not rows:
        return []
    lines = ["", f"White-box inversion (`--whitebox`, models/audit/whitebox.py) on {rows[0]['whitebox']['n']} "
             "crops of the attack people: SSIM of the reconstruction to its own crop, mean SSIM to other "
             "people's, and the share of pairs in which the own crop is the more similar (0.5: nothing of the "
             "person comes back).", "",
             *table_head("network", "cut", "feature bytes", "SSIM to own crop", "SSIM to other people's",
                         "own more similar")]
    for r in rows:
        w = r["whitebox"]
        lines.append(f"| {r['embedding']} | {r['cut']} | {r['feature_bytes']:,} | {w['ssim_own']:.3f} | "
                     f"{w['ssim_others']:.3f} | {w['own_beats_other']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.paper_table", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="runs/paper-table", help="where the bundles are trained (reused)")
    p.add_argument("--data-root", default=str(default_data_root()))
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="LFW protocol size (small fits a shared 2-core machine in about half an hour)")
    p.add_argument("--epochs", type=int, default=None, help="primary epochs (default: the embedding's)")
    p.add_argument("--siamese-epochs", type=int, default=None)
    p.add_argument("--analyzer-epochs", type=int, default=None)
    p.add_argument("--cuts", default=",".join(CUTS))
    p.add_argument("--embeddings", default=",".join(EMBEDDINGS))
    p.add_argument("--detector", default=DEFAULT_KIND)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest on a busy machine")
    p.add_argument("--whitebox", action="store_true", help="also run the white-box inversion on every bundle")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", "data_root")}
    info = machine()
    print(setup_lines(info, settings), file=sys.stderr)
    work = Path(args.work)
    t0 = time.perf_counter()
    runs = []
    protocol = None
    if args.whitebox:
        from models.data import load_protocol
        protocol = load_protocol("image", str(Path(args.data_root) / "lfw"), seed=args.seed, size=args.size,
                                 detector=args.detector)
    for emb in args.embeddings.split(","):
        for cut in args.cuts.split(","):
            m = trained(work, f"lfw-{emb}-{cut}", train_argv(args, emb, cut))
            if protocol is not None:
                m = {**m, "whitebox": whitebox_match(work / f"lfw-{emb}-{cut}", protocol, args.seed)}
            runs.append(m)
            print(f"{emb} {cut}: gender {m['primary_accuracy']:.4f} (uncut {m['training']['uncut_accuracy']:.4f}), "
                  f"{m['feature_bytes']} B, {m['seconds']:.0f} s", file=sys.stderr)
    uncut, rows = rows_of(runs)
    res = {"machine": info, "settings": settings, "detector": args.detector,
           "detector_params": DEFAULT_PARAMS if args.detector == DEFAULT_KIND else {},
           "command": "python -m bench.paper_table " + " ".join(sys.argv[1:] if argv is None else argv),
           "uncut": uncut, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data_root)
    md = markdown(res)
    (out / "lfw-paper-table.json").write_text(portable(json.dumps(res, indent=2, default=str) + "\n", root, work))
    (out / "lfw-paper-table.md").write_text(portable(md, root, work))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
