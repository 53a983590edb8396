"""The audit's figures: the privacy/utility trade-off and the reconstruction grid (PNG, matplotlib Agg)."""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from models.audit.pipeline import AuditRun  # noqa: E402

log = logging.getLogger(__name__)

DPI = 120


MARKERS = {"simple": "o", "siamese": "s", "advanced": "D", "private": "*"}


def tradeoff_plot(metrics: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Primary accuracy (y) against the best attacker's identity top-1 (x), one point per bundle.

    ``metrics`` is the audit's ``metrics.json`` content (bundle name -> entry). Identity chance is a
    dashed vertical line, twice chance a dotted one; the raw input, which has no primary accuracy of its
    own, a dash-dotted one. Good extractors sit top-left.
    """
    path = Path(path)
    fig, ax = plt.subplots(figsize=(9.6, 4.8), dpi=DPI)
    bundles = {n: m for n, m in metrics.items() if m.get("primary_accuracy") is not None}
    chances = [m["identity_chance"] for m in metrics.values()]
    if chances:
        ax.axvline(chances[0], color="grey", ls="--", lw=1, label=f"identity chance ({chances[0]:.3f})")
        ax.axvline(2 * chances[0], color="grey", ls=":", lw=0.8, label="2 x chance")
    floors = [m["identity_label_floor"] for m in metrics.values() if m.get("identity_label_floor") is not None]
    if floors and (not chances or abs(floors[0] - chances[0]) > 1e-9):
        ax.axvline(floors[0], color="tab:green", ls="--", lw=1,
                   label=f"primary-label floor ({floors[0]:.3f})")
    for name, m in metrics.items():
        if m.get("primary_accuracy") is None:
            ax.axvline(m["identity_top1"], color="tab:red", ls="-.", lw=1,
                       label=f"{name} ({m['identity_top1']:.2f})")
    cmap = plt.get_cmap("tab10")
    for i, (name, m) in enumerate(bundles.items()):
        ax.scatter(m["identity_top1"], m["primary_accuracy"], s=55, color=cmap(i % 10), zorder=3,
                   marker=MARKERS.get(m.get("embedding"), "o"), edgecolor="black", linewidth=0.5, alpha=0.85,
                   label=f"{name}: {m['identity_top1']:.2f} / {m['primary_accuracy']:.3f} "
                         f"({m.get('feature_bytes')} B)")
    accs = [m["primary_accuracy"] for m in bundles.values()]
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(max(0.0, min(accs, default=0.5) - 0.1), min(1.0, max(accs, default=1.0) + 0.03) + 0.005)
    ax.set_xlabel("attacker identity top-1 accuracy (best attacker; lower is more private)")
    ax.set_ylabel("primary-task accuracy (held out)")
    ax.set_title(title or "privacy / utility trade-off", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), framealpha=0.9,
              title="identity top-1 / primary acc (bytes/msg)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def reconstruction_grid(run: AuditRun, path: str | Path) -> Path:
    """Original held-out inputs in the first row, then each embedding's inversion, one row per entry.

    Faces are shown in grey; speech as log-mel images (time across, mel band up).
    """
    path = Path(path)
    rows = [("original", run.originals)] + [(e.name, e.examples) for e in run.entries]
    n_cols = len(run.originals)
    h, w = run.originals.shape[2:]
    cell = 1.1 if run.modality == "image" else 1.4
    fig, axes = plt.subplots(len(rows), n_cols, squeeze=False, dpi=DPI,
                             figsize=(1.6 + n_cols * cell, len(rows) * cell * h / w + 0.6))
    image = run.modality == "image"
    for r, (label, imgs) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(np.asarray(imgs[c])[0], cmap="gray" if image else "magma", vmin=0.0, vmax=1.0,
                          origin="upper" if image else "lower", aspect="auto", interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    what = "face crops" if image else "log-mel spectrograms"
    fig.suptitle(f"inversion of held-out {what} from the released features ({run.protocol})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Redraw the trade-off plot from a saved audit: ``python -m models.audit.figures METRICS OUT.png``."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("metrics", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    tradeoff_plot(json.loads(args.metrics.read_text()), args.out, args.title)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
