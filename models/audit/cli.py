"""``privedge audit``: measure what an attacker learns from bundles' released features.

    privedge audit --bundle DIR [--bundle DIR ...] [--raw] [--face-recognition] --data fsdd-path|orl-path|synthetic|PATH
                   [--crop-faces [DETECTOR]] [--size full|small] [--seed S] [--quick] [--no-cost]
                   [--threads N] [--attacks basic|all] [--no-inversion] --out DIR

Writes ``DIR/report.md``, ``DIR/metrics.json`` (one entry per bundle) and ``DIR/tradeoff.png``,
``DIR/reconstructions.png``. ``--attacks all`` adds the stronger attacks (aggregation over L releases,
linkage, metric learning on unseen people, a post-hoc capacity sweep), bootstrap intervals and the bound
per release: tables in the report, ``attacks`` and ``bound`` in each metrics entry.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import torch
from tqdm import tqdm

from models.audit.face_recognition import FaceRecognitionUnavailable
from models.audit.pipeline import ATTACKS, STAGES_PER_BUNDLE, AuditSettings, run_audit
from models.audit.report import write_report
from models.bundle import BundleError
from models.faces import DEFAULT_KIND

log = logging.getLogger(__name__)


class _SuiteProgress(logging.Handler):
    """Shows the stronger attacks' own steps (aggregation L=10, linkage, the sweep...) on the progress bar:
    that stage alone runs for most of an hour on LFW at full size."""

    def __init__(self, show) -> None:
        super().__init__(level=logging.INFO)
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        self.show(record.getMessage().removeprefix("stronger attacks: "))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge audit", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", action="append", default=[], metavar="DIR",
                   help="bundle directory to audit (repeat for a sweep)")
    p.add_argument("--raw", action="store_true", help="also audit the raw (preprocessed) input")
    p.add_argument("--face-recognition", action="store_true",
                   help="images read from files (LFW): also audit each whole photograph through a trained face "
                        "recognition network (dlib's ResNet descriptor), the raw-input attacker at full strength")
    p.add_argument("--modality", choices=("image", "speech"),
                   help="needed only when auditing --raw without any --bundle")
    p.add_argument("--data", required=True,
                   help="FSDD, ORL or LFW folder, a CSV file / labelled folder, or 'synthetic'")
    p.add_argument("--crop-faces", nargs="?", const=DEFAULT_KIND, default=None, metavar="DETECTOR",
                   help="images: take each image as a whole camera frame and audit on the face the detector "
                        "finds in it, cut as the gateway cuts it (detector kind, default %(const)s)")
    p.add_argument("--size", choices=("full", "small"), default="full", help="protocol size (small: smoke tests)")
    p.add_argument("--out", required=True, metavar="DIR", help="where report.md, metrics.json and the PNGs go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="short attacker/decoder training: for smoke tests, not for quoted figures")
    p.add_argument("--no-cost", action="store_true", help="skip the latency / memory measurements")
    p.add_argument("--no-inversion", action="store_true",
                   help="skip the inversion decoder (SSIM / PSNR not measured; its grid rows stay black)")
    p.add_argument("--attacks", choices=ATTACKS, default="basic",
                   help="basic: today's attackers; all: also the stronger attacks, intervals and the bound per "
                        "release (minutes more per bundle)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: cores are shared)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.bundle and not args.raw and not args.face_recognition:
        print("privedge audit: give at least one --bundle, or --raw / --face-recognition", file=sys.stderr)
        return 2
    if args.face_recognition and args.modality not in (None, "image"):
        print("privedge audit: --face-recognition is for images", file=sys.stderr)
        return 2
    if args.face_recognition and not args.bundle:
        args.modality = "image"
    if not args.bundle and not args.modality:
        print("privedge audit: --raw without a --bundle needs --modality", file=sys.stderr)
        return 2
    if args.threads < 1:
        print("privedge audit: --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    settings = AuditSettings.quick() if args.quick else AuditSettings()
    settings = replace(settings, seed=args.seed, size=args.size, measure_cost=not args.no_cost,
                       inversion=not args.no_inversion, attacks=args.attacks)
    extra = 1 if args.attacks == "all" else 0     # the stronger attacks: one stage per audited source
    total = ((STAGES_PER_BUNDLE + extra) * len(args.bundle) + ((2 + extra) if args.raw else 0)
             + ((3 + extra) if args.face_recognition else 0))
    with tqdm(total=total, desc="audit", unit="stage", file=sys.stderr) as bar:
        current = [""]

        def step(what: str) -> None:   # called as each stage starts
            current[0] = what
            bar.set_postfix_str(what)
            bar.update(1)
        detail = _SuiteProgress(lambda what: bar.set_postfix_str(f"{current[0]}: {what}"))
        suite_log = logging.getLogger("models.audit.suite")
        suite_log.addHandler(detail)
        if not args.verbose:       # its INFO records for the bar alone, not for the log on stderr
            suite_log.setLevel(logging.INFO)
            suite_log.propagate = False
        try:
            run = run_audit(args.bundle, args.data, raw=args.raw, modality=args.modality,
                            settings=settings, detector=args.crop_faces, face_recognition=args.face_recognition,
                            step=step)
        except (BundleError, FileNotFoundError, ValueError, FaceRecognitionUnavailable) as e:
            bar.close()
            print(f"privedge audit: {e}", file=sys.stderr)
            return 1
        finally:
            suite_log.removeHandler(detail)
            suite_log.setLevel(logging.NOTSET)
            suite_log.propagate = True
    paths = write_report(run, args.out)
    for e in run.entries:
        i = e.identity
        acc = "—" if e.primary_accuracy is None else f"{e.primary_accuracy:.3f}"
        print(f"{e.name:<28} primary {acc:>6}  identity top-1 {i.top1:.3f} ({i.best}, chance "
              f"{i.chance_top1:.3f})  log-rank {i.log_rank:.3f}  EER {e.eer:.3f}  SSIM {e.ssim:.3f}")
    if run.crop is not None:
        c = run.crop
        print(f"{c['detector']} face crops: {c['cropped']} of {c['frames']} frames, "
              f"{c['missed']} with no face left out")
    print(f"report: {paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
