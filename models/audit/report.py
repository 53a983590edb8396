"""The audit's outputs: ``metrics.json`` (one entry per bundle), ``report.md`` and the PNG figures."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

from models.audit.attack_tables import stronger_attacks_markdown
from models.audit.figures import reconstruction_grid, tradeoff_plot
from models.audit.measures import LabelFloor
from models.audit.pipeline import AuditRun, BundleAudit

log = logging.getLogger(__name__)

METRICS = "metrics.json"
REPORT = "report.md"
TRADEOFF_PNG = "tradeoff.png"
GRID_PNG = "reconstructions.png"


def _finite(v):
    """JSON has no NaN or infinity: such values become null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def entry_metrics(e: BundleAudit) -> dict:
    """One bundle's ``metrics.json`` entry: the DESIGN.md keys first, then the details."""
    ident = e.identity
    m = {
        "primary_accuracy": e.primary_accuracy,
        "identity_top1": ident.top1,
        "identity_chance": ident.chance_top1,
        "nn_error": ident.nn_error,
        "log_rank": ident.log_rank,
        "ssim": e.ssim,
        "psnr_db": e.psnr,
        "identity_top5": ident.top5,
        "identity_top5_chance": ident.chance_top5,
        "best_attacker": ident.best,
        "n_identities": ident.n_classes,
        "attackers": {k: asdict(v) for k, v in ident.attackers.items()},
        "verification_eer": e.eer,
        "protocol": e.protocol, "modality": e.modality, "embedding": e.embedding, "cut": e.cut,
        "dims": e.dims, "feature_bytes": e.feature_bytes, "bundle": e.bundle, "model": e.model,
        "cost": e.cost,
        "attacks": None if e.suite is None else e.suite.to_dict(),
        "bound": None if e.bound is None else e.bound.to_dict(),
        "inversion_match": e.inversion_match,
    }
    if e.modality == "speech":
        m["eer"] = e.eer
    return {k: ({a: {f: _finite(x) for f, x in d.items()} for a, d in v.items()} if k == "attackers"
                else _finite_tree(v) if k in ("attacks", "bound", "inversion_match") else _finite(v)) for k, v in m.items()}


def _finite_tree(v):
    """:func:`_finite` through nested dicts and lists."""
    if isinstance(v, dict):
        return {k: _finite_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_tree(x) for x in v]
    return _finite(v)


def metrics(run: AuditRun) -> dict:
    """``{bundle name: entry}`` for every audited bundle, the raw input included."""
    f = run.floor
    floors = {"identity_label_floor": None if f is None else _finite(f.top1),
              "log_rank_label_floor": None if f is None else _finite(f.log_rank),
              "eer_label_floor": None if f is None else _finite(f.eer)}
    if run.crop is not None:
        floors["face_crops"] = run.crop
    return {e.name: {**entry_metrics(e), **floors} for e in run.entries}


def _f(v, fmt: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _cost(e: BundleAudit, part: str, key: str, scale: float = 1.0, fmt: str = ".1f") -> str:
    v = e.cost.get(part, {}).get(key)
    return "—" if v is None else format(v / scale, fmt)


def report_markdown(run: AuditRun) -> str:
    """The human-readable report: settings, the main table, attackers, cost, figures."""
    s = run.settings
    floor = run.floor or LabelFloor(math.nan, math.nan, math.nan)
    lines = [
        f"# privedge privacy audit: {run.task} ({run.modality}), protocol `{run.protocol}`", "",
        f"Data: `{run.data}` (size {s.size}), seed {s.seed}. Threat model: the cloud holds the extractor "
        "and labelled samples of the people it wants to recognise; attackers train on features of "
        "`attack_train` and are tested on `attack_test` (other samples of the same people). Each trained "
        "attacker stops when its accuracy on a validation slice of its training set stops improving. "
        "The headline identity figures are those of the best attacker (linear = multinomial logistic "
        "regression, mlp, 1-nn), picked on the test set: the attacker's most favourable reading. "
        "Log-rank: mean log rank of the true identity divided by its value under a random ranking "
        "(1 = chance, 0 = always first). EER: verification of feature pairs by the better of cosine "
        "similarity and Euclidean distance (0.5 = chance). SSIM/PSNR: inversion decoder on held-out "
        "inputs (inputs scaled to [0, 1]).", "",
        f"Primary-label floor: identity top-1 {_f(floor.top1)}, log-rank {_f(floor.log_rank)}, EER "
        f"{_f(floor.eer)} for an attacker who knows only each sample's true primary label; features that "
        "keep the primary task cannot leak less.", "",
        *([] if run.crop is None else [
            f"Inputs: {run.crop['detector']} face detector crops of whole frames, cut as the gateway cuts them: "
            f"{run.crop['cropped']} of {run.crop['frames']} frames cropped, {run.crop['missed']} with no face "
            "found left out.", ""]),
        "| bundle | embedding | cut | dims | bytes/msg | primary acc | identity top-1 (attacker) | chance "
        "| top-5 (chance) | 1-NN error | log-rank | EER | SSIM | PSNR dB | extractor params | extractor MMACs "
        "| latency ms | memory MB |",
        "|" + "---|" * 18,
    ]
    for e in run.entries:
        i = e.identity
        top5 = "—" if i.top5 is None else f"{i.top5:.3f} ({i.chance_top5:.3f})"
        lines.append(
            f"| {e.name} | {e.embedding} | {e.cut or '—'} | {e.dims} | {e.feature_bytes} "
            f"| {_f(e.primary_accuracy)} | {i.top1:.3f} ({i.best}) | {i.chance_top1:.3f} | {top5} "
            f"| {i.nn_error:.3f} | {i.log_rank:.3f} | {e.eer:.3f} | {e.ssim:.3f} | {e.psnr:.1f} "
            f"| {_cost(e, 'extractor', 'params', 1, '.0f')} | {_cost(e, 'extractor', 'macs', 1e6, '.2f')} "
            f"| {_cost(e, 'extractor', 'latency_ms', 1, '.2f')} | {_cost(e, 'extractor', 'memory_mb')} |")
    lines += ["", "## Every attacker (identity top-1 / normalised log-rank)", "",
              "| bundle | " + " | ".join(_attacker_names(run)) + " |",
              "|---|" + "---|" * len(_attacker_names(run))]
    for e in run.entries:
        cells = []
        for a in _attacker_names(run):
            r = e.identity.attackers.get(a)
            cells.append("—" if r is None else f"{r.top1:.3f} / {r.log_rank:.3f}"
                         + ("" if r.epochs is None else f" ({r.epochs} ep)"))
        lines.append(f"| {e.name} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost: the extractor at the gateway vs the whole network run at home", "",
              "Batch 1, one thread, median of timed runs; memory is what the model adds to the process.",
              "", "| bundle | extractor params | extractor MMACs | extractor ms | extractor MB "
              "| whole params | whole MMACs | whole ms | whole MB | front end ms |", "|" + "---|" * 10]
    for e in run.entries:
        if not e.cost:
            continue
        lines.append(
            f"| {e.name} | {_cost(e, 'extractor', 'params', 1, '.0f')} "
            f"| {_cost(e, 'extractor', 'macs', 1e6, '.2f')} | {_cost(e, 'extractor', 'latency_ms', 1, '.2f')} "
            f"| {_cost(e, 'extractor', 'memory_mb')} | {_cost(e, 'full', 'params', 1, '.0f')} "
            f"| {_cost(e, 'full', 'macs', 1e6, '.2f')} | {_cost(e, 'full', 'latency_ms', 1, '.2f')} "
            f"| {_cost(e, 'full', 'memory_mb')} | {_cost(e, 'extractor', 'front_end_ms', 1, '.1f')} |")
    lines += stronger_attacks_markdown(run)
    lines += ["", "## Figures", "", f"![trade-off]({TRADEOFF_PNG})", "", f"![reconstructions]({GRID_PNG})",
              ""]
    return "\n".join(lines)


def _attacker_names(run: AuditRun) -> list[str]:
    names: list[str] = []
    for e in run.entries:
        names += [a for a in e.identity.attackers if a not in names]
    return names


def tradeoff_title(run: AuditRun) -> str:
    return f"privacy / utility trade-off: {run.task} ({run.modality}), protocol {run.protocol}"


def write_report(run: AuditRun, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, report.md, tradeoff.png and reconstructions.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / METRICS, "report": out / REPORT}
    entries = metrics(run)
    paths["metrics"].write_text(json.dumps(entries, indent=2, allow_nan=False) + "\n")
    paths["tradeoff"] = tradeoff_plot(entries, out / TRADEOFF_PNG, tradeoff_title(run))
    paths["grid"] = reconstruction_grid(run, out / GRID_PNG)
    paths["report"].write_text(report_markdown(run))
    log.info("audit report in %s", out)
    return paths
