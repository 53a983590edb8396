"""``privedge train``: train an embedding on a dataset and write an extractor/analyzer bundle.

    privedge train --modality image|speech --data PATH|synthetic [--crop-faces [DETECTOR]]
                   [--embedding private|simple|siamese|advanced] [--cut NAME] [--dims K] [--epochs N]
                   [--seed S] [--size full|small] [--margin M] [--contrastive-weight W] [--noise STD]
                   [--agnostic-weight W] [--adversary-weight W] [--dtype float32|float16|int8]
                   [--projection pca|lda] [--threads T] [--sign-key KEY] --out DIR

``private`` (the default) is privedge's own extractor; the privacy options (noise, identity terms, dtype,
dims, projection) also apply to ``advanced``, each alone or combined, and are recorded in the bundle's manifest.

Prints the held-out primary accuracy, the extractor's parameters and multiply-adds per input and the
feature bytes per message, and writes them to ``DIR/metrics.json`` beside the bundle. With the provider's
private key (``--sign-key`` or ``PRIVEDGE_SIGNING_KEY``) the bundle, metrics.json included, is signed last
(:mod:`models.signing`); without one it is written unsigned, and the services refuse it until it is signed.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import signing
from models.bundle import make_manifest, save_bundle
from models.embedding_training import (DEFAULT_EMBEDDING, EMBEDDINGS, PRIVATE_DEFAULTS, PROJECTIONS,
                                       EmbeddingConfig, total_steps, train_embedding)
from models.faces import DEFAULT_KIND
from models.release import RELEASE_DTYPES
from models.nets import DEFAULT_CUT, count_cost

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge train", description=__doc__.split("\n")[0])
    p.add_argument("--modality", required=True, choices=["image", "speech"])
    p.add_argument("--data", required=True,
                   help="dataset folder (FSDD, ORL, LFW, labelled folder), CSV file, or 'synthetic'")
    p.add_argument("--crop-faces", nargs="?", const=DEFAULT_KIND, default=None, metavar="DETECTOR",
                   help="images: take each image as a whole camera frame and train on the face the detector "
                        "finds in it, cut as the gateway cuts it (detector kind, default %(const)s)")
    p.add_argument("--embedding", default=DEFAULT_EMBEDDING, choices=list(EMBEDDINGS),
                   help="default %(default)s")
    p.add_argument("--cut", default=None,
                   help=f"cut after this block (block1..block4); default {DEFAULT_CUT}, and for private "
                        f"{PRIVATE_DEFAULTS['cut']['image']} for images, "
                        f"{PRIVATE_DEFAULTS['cut']['speech']} for speech")
    p.add_argument("--dims", type=int, default=None,
                   help="projected dims (default: 8 for advanced, classes - 1 for private)")
    p.add_argument("--epochs", type=int, default=None, help="primary training epochs (default: per modality)")
    p.add_argument("--siamese-epochs", type=int, default=None)
    p.add_argument("--analyzer-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="full", choices=["full", "small"], help="small: a quick subset (smoke tests)")
    p.add_argument("--margin", type=float, default=10.0, help="contrastive margin (default %(default)s)")
    p.add_argument("--contrastive-weight", type=float, default=0.01, help="default %(default)s")
    p.add_argument("--pca-tune", default=None, choices=["analyzer", "both"],
                   help="what trains behind the frozen PCA: the analyzer only, or the extractor too")
    p.add_argument("--noise", type=float, default=None,
                   help="Gaussian noise on the released features, relative to each dimension's spread, fresh "
                        "for every message (default: off for advanced; private: "
                        f"{PRIVATE_DEFAULTS['noise_std']['image']} for images, "
                        f"{PRIVATE_DEFAULTS['noise_std']['speech']} for speech)")
    p.add_argument("--agnostic-weight", type=float, default=None,
                   help="identity-agnostic contrastive loss on the projected features before the noise "
                        f"(0 = off; private: {PRIVATE_DEFAULTS['agnostic_weight']})")
    p.add_argument("--adversary-weight", type=float, default=None,
                   help="weight of the identity adversary's confusion term (0 = off; private: "
                        f"{PRIVATE_DEFAULTS['adversary_weight']})")
    p.add_argument("--projection", default=None, choices=list(PROJECTIONS),
                   help="frozen projection to k dims: pca (the paper's) or lda (the directions that separate "
                        "the primary classes); default: lda for private, pca otherwise")
    p.add_argument("--dtype", default=None, choices=list(RELEASE_DTYPES),
                   help="feature dtype on the wire; int8 with a per-dimension scale in the manifest")
    # One thread by default: on a shared 2-core machine torch's OpenMP workers spin while they wait for a
    # core, and two threads trained three times slower than one here.
    p.add_argument("--threads", type=int, default=int(os.environ.get("PRIVEDGE_TORCH_THREADS", "1")),
                   help="torch threads (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sign-key", default=None,
                   help="provider private key (privedge bundle keygen) to sign the bundle with "
                        "(default: PRIVEDGE_SIGNING_KEY; neither: unsigned)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    return p


def feature_bytes(manifest: dict) -> int:
    """Bytes of feature data per message: elements x element size."""
    return int(math.prod(manifest["feature"]["shape"]) * np.dtype(manifest["feature"]["dtype"]).itemsize)


def privacy_settings(cfg: EmbeddingConfig, modality: str) -> dict:
    """The identity-protection settings in effect, for the manifest and metrics.json."""
    if not cfg.projected:
        return {"noise_std": 0.0, "agnostic_weight": 0.0, "adversary_weight": 0.0, "dtype": "float32",
                "projection": None}
    return {k: cfg.setting(k, modality) for k in ("noise_std", "agnostic_weight", "adversary_weight", "dtype",
                                                  "projection")}


def run(args: argparse.Namespace) -> dict:
    """Train, save the bundle and metrics.json; returns the metrics."""
    from models.data import load_protocol  # the dataset layer pulls in generators; only load it here

    key = args.sign_key or signing.signing_key_from_env()
    if key is not None:
        signing.load_private_key(key)  # a bad key fails now, not after the training it would sign
    torch.set_num_threads(max(1, args.threads))
    cfg = EmbeddingConfig(embedding=args.embedding, cut=args.cut, dims=args.dims, epochs=args.epochs,
                          siamese_epochs=args.siamese_epochs, analyzer_epochs=args.analyzer_epochs,
                          margin=args.margin, contrastive_weight=args.contrastive_weight,
                          noise_std=args.noise, agnostic_weight=args.agnostic_weight,
                          adversary_weight=args.adversary_weight, dtype=args.dtype, seed=args.seed,
                          projection=args.projection,
                          **({"pca_tune": args.pca_tune} if args.pca_tune else {}))
    t0 = time.perf_counter()
    protocol = load_protocol(args.modality, args.data, seed=args.seed, size=args.size,
                             detector=getattr(args, "crop_faces", None))
    if protocol.train.modality != args.modality:
        raise ValueError(f"{args.data} holds {protocol.train.modality} data, not {args.modality}")
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps(len(protocol.train), args.modality, cfg), unit="input",
                   desc=f"{protocol.name} {args.embedding}", file=sys.stderr)
    try:
        trained = train_embedding(protocol, cfg, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    manifest = make_manifest(task=protocol.task, modality=args.modality, labels=protocol.train.primary_names,
                             net_cfg=trained.net_cfg, cut=trained.cut, embedding=args.embedding,
                             pca=trained.pca, noise_std=(cfg.setting("noise_std", args.modality)
                                                                    if cfg.projected else 0.0),
                             speech=cfg.speech if args.modality == "speech" else None)
    if trained.feature is not None:
        manifest["feature"] = trained.feature  # dtype, shape and the int8 scale
    manifest["privacy"] = privacy_settings(cfg, args.modality)
    ext_cost = count_cost(trained.extractor, trained.net_cfg.in_shape)
    ana_cost = count_cost(trained.analyzer, tuple(manifest["feature"]["shape"]))
    metrics = {
        "protocol": protocol.name,
        "task": protocol.task,
        "embedding": args.embedding,
        "cut": trained.cut,
        "dims": trained.pca.k if trained.pca is not None else None,
        **privacy_settings(cfg, args.modality),
        "pca_tune": cfg.pca_tuning_for(args.modality)[0] if trained.pca is not None else None,
        "margin": cfg.margin,
        "contrastive_weight": cfg.contrastive_weight,
        "seed": cfg.seed,
        "epochs": list(cfg.epochs_for(args.modality)),
        "primary_accuracy": round(trained.metrics["primary_accuracy"], 4),
        "feature_bytes": feature_bytes(manifest),
        "extractor_params": ext_cost.params,
        "extractor_macs": ext_cost.macs,
        "analyzer_params": ana_cost.params,
        "analyzer_macs": ana_cost.macs,
        "n_train": len(protocol.train),
        "n_test": len(protocol.test),
        "face_crops": protocol.crop,
        "training": {k: round(v, 4) if isinstance(v, float) else v for k, v in trained.metrics.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    manifest["metrics"] = {k: metrics[k] for k in ("protocol", "primary_accuracy", "feature_bytes",
                                                   "extractor_params", "extractor_macs")}
    out = Path(args.out)
    metrics["model"] = save_bundle(out, extractor=trained.extractor, analyzer=trained.analyzer, manifest=manifest,
                                   sign_key=key)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    metrics["signed_by"] = signing.sign_bundle(out, key)["key"] if key is not None else None
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = run(args)
    except (ValueError, FileNotFoundError, signing.SignatureError) as e:
        print(f"privedge train: {e}", file=sys.stderr)
        return 2
    print(f"model {m['model']} ({m['protocol']}, {m['embedding']}, cut {m['cut']}, dims {m['dims']})")
    print(f"held-out primary accuracy  {m['primary_accuracy']:.4f}")
    print(f"extractor parameters       {m['extractor_params']:,}")
    print(f"extractor multiply-adds    {m['extractor_macs']:,} per input")
    print(f"feature bytes per message  {m['feature_bytes']}")
    print(f"seconds                    {m['seconds']:.0f}")
    if m["face_crops"]:
        c = m["face_crops"]
        print(f"face crops ({c['detector']})      {c['cropped']} of {c['frames']} frames, {c['missed']} with no face "
              "left out")
    print(f"signed by key              {m['signed_by'][:16]}..." if m["signed_by"] else
          f"unsigned: sign it with privedge bundle sign --key KEY {args.out}")
    written = sorted(f.name for f in Path(args.out).iterdir() if f.is_file())
    print(f"wrote {args.out}/: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
