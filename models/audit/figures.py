"""The audit's figures: the privacy/utility trade-off and the reconstruction grid (PNG, matplotlib Agg)."""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from models.audit.pipeline import RAW, AuditRun  # noqa: E402

log = logging.getLogger(__name__)

DPI = 120


def tradeoff_plot(run: AuditRun, path: str | Path) -> Path:
    """Primary accuracy (y) against the best attacker's identity top-1 (x), one point per bundle.

    Identity chance is a dashed vertical line; the raw input, which has no primary accuracy of its own,
    a dotted one. Good extractors sit top-left.
    """
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=DPI)
    bundles = [e for e in run.entries if e.primary_accuracy is not None]
    chance = run.entries[0].identity.chance_top1 if run.entries else None
    if chance is not None:
        ax.axvline(chance, color="grey", ls="--", lw=1, label=f"identity chance ({chance:.3f})")
        ax.axvline(2 * chance, color="grey", ls=":", lw=0.8, label="2 x chance")
    for e in run.entries:
        if e.primary_accuracy is None:
            ax.axvline(e.identity.top1, color="tab:red", ls="-.", lw=1,
                       label=f"{RAW} ({e.identity.top1:.2f})")
    cmap = plt.get_cmap("tab10")
    for i, e in enumerate(bundles):
        ax.scatter(e.identity.top1, e.primary_accuracy, s=60, color=cmap(i % 10), zorder=3,
                   label=f"{e.name} ({e.embedding}, {e.cut}, {e.dims} d)")
    ax.set_xlim(0.0, 1.02)
    low = min([e.primary_accuracy for e in bundles], default=0.5)
    ax.set_ylim(max(0.0, min(low - 0.05, 0.5)), 1.01)
    ax.set_xlabel("attacker identity top-1 accuracy (best attacker; lower is more private)")
    ax.set_ylabel("primary-task accuracy (held out)")
    ax.set_title(f"privacy / utility trade-off: {run.task}, protocol {run.protocol}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
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
