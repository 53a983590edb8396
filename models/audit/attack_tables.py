"""The report's tables of the stronger attacks (``--attacks all``): bound, aggregation, linkage, metric
learning, capacity sweep, and the issue's targets. Empty when the audit ran the basic attacks only."""
from __future__ import annotations

import math

from models.audit.intervals import Interval

# The targets of issue 17, reported beside the figures (not enforced).
TARGETS = {"top1_over_floor_max": 0.02, "top1_l100_over_chance_max": 2.0, "eer_l1_min": 0.45,
           "eer_l100_min": 0.40, "tpr_1pct_max": 0.02}


def _i(v: Interval | None) -> str:
    if v is None or math.isnan(v.value):
        return "—"
    return f"{v.value:.3f} [{v.low:.3f}, {v.high:.3f}]"


def _b(v: float) -> str:
    return "∞" if math.isinf(v) else f"{v:.2f}"


def _yes(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "no")


def stronger_attacks_markdown(run) -> list[str]:
    """Markdown lines for ``run`` (an :class:`models.audit.pipeline.AuditRun`)."""
    entries = [e for e in run.entries if e.suite is not None]
    if not entries:
        return []
    lengths = [a.length for a in entries[0].suite.aggregation]
    out = ["", "## Stronger attacks", "",
           "Every figure with its bootstrap 95% interval (percentile, 1000 resamples unless the run was quick; "
           "people resampled for sets and pairs, test items for single releases). Baselines in every table: "
           "uniform chance, the primary-label floor (an attacker who sees only the releases' true primary "
           "labels) and the raw input (the clean-feature attacker: if it is not near perfect, the attacker is "
           "too weak to count). Sets of L releases of one person: a person with fewer than L inputs has some "
           "released again through the extractor (fresh noise per release; speech inputs keep their pitch "
           "shift, the attacker's most favourable reading)."]
    bounds = [e for e in entries if e.bound is not None]
    if bounds:
        out += ["", "### Bound per release (Gaussian channel, models/audit/capacity.py)", "",
                "Per dimension min(0.5 log2(1 + L A^2 / sigma^2), L log2(255)) bits for L releases of one "
                "input (A: int8 clip amplitude 127 x scale, sigma: noise std, both in feature units), L times "
                "the single-release figure for L different inputs; summed over dimensions. Assumes the clean "
                "feature within the clip range and Gaussian noise fresh per release; clipping and rounding "
                "only lose information. Top-1 ceiling: Fano's inequality over the attacker's people, from the "
                "L-different-inputs bits. Measured: the same with the clean feature's variance (release "
                "variance minus sigma^2 on the attacker's training releases) in place of A^2, an estimate "
                "rather than a guarantee.", "",
                "| bundle | dtype | dims | A | sigma | bits / release | " +
                " | ".join(f"L={L}: one input / different" for L in lengths if L > 1) +
                " | " + " | ".join(f"top-1 ceiling L={L}" for L in lengths) + " | measured bits / release "
                "| measured top-1 ceiling L=" + "/".join(str(L) for L in lengths) + " | chance |",
                "|" + "---|" * (9 + sum(L > 1 for L in lengths) + len(lengths))]
        for e in bounds:
            b = e.bound
            amp = "/".join(f"{a:.3g}" for a in b.amplitude[:3]) + ("…" if b.dims > 3 else "")
            sig = "/".join(f"{s:.3g}" for s in b.sigma[:3]) + ("…" if b.dims > 3 else "")
            out.append(f"| {e.name} | {b.dtype} | {b.dims} | {amp} | {sig} | {_b(b.bits_per_release)} | " +
                       " | ".join(f"{_b(b.bits_one_input[L])} / {_b(b.bits_distinct[L])}" for L in lengths if L > 1)
                       + " | " + " | ".join(f"{b.top1_ceiling[L]:.3f}" for L in lengths)
                       + (" | — | — " if b.measured_bits is None else
                          f" | {_b(b.measured_bits[lengths[0]] / lengths[0])} | "
                          + "/".join(f"{b.measured_top1_ceiling[L]:.3f}" for L in lengths) + " ")
                       + f"| {1 / b.n_classes:.3f} |")
    names = []
    for e in entries:
        for a in e.suite.aggregation:
            names += [k for k in a.top1 if k not in names]
    out += ["", "### Identity over L releases of one person (top-1)", "",
            "Attackers trained on sets of the attacker's training inputs, tested on sets of its test inputs.", "",
            "| bundle | L | chance | label floor | " + " | ".join(names) + " | best |",
            "|" + "---|" * (5 + len(names))]
    for e in entries:
        for a in e.suite.aggregation:
            out.append(f"| {e.name} | {a.length} | {a.chance:.3f} | {_i(a.label_floor)} | " +
                       " | ".join(_i(a.top1.get(k)) for k in names) + f" | {a.best} |")
    out += ["", "### Linkage: are two releases (two sets of L) from the same person?", "",
            "Probe and reference sets from disjoint inputs of each person; the scorer with the lowest EER "
            "(cosine, distance, pair mlp). Chance: EER 0.5, TPR equal to the FPR.", "",
            "| bundle | L | scorer | EER | TPR @ 1% FPR | TPR @ 0.1% FPR | label-floor EER | pairs (same) |",
            "|" + "---|" * 8]
    for e in entries:
        for k in e.suite.linkage:
            out.append(f"| {e.name} | {k.length} | {k.scorer} | {_i(k.eer)} | {_i(k.tpr[0.01])} "
                       f"| {_i(k.tpr[0.001])} | {k.label_floor_eer:.3f} | {k.pairs} ({k.same_pairs}) |")
    out += ["", "### Metric learning (AM-softmax) on people it never saw", "",
            "Trained on half of the attacker's people, tested on the other half: identification against "
            "per-person galleries of their training releases, verification of (probe, gallery) pairs.", "",
            "| bundle | people trained / unseen | identification top-1 | chance | EER | TPR @ 1% FPR "
            "| TPR @ 0.1% FPR |", "|" + "---|" * 7]
    for e in entries:
        m = e.suite.metric
        if m is None:
            out.append(f"| {e.name} | fewer than 4 people | — | — | — | — | — |")
            continue
        out.append(f"| {e.name} | {m.train_people} / {m.unseen_people} | {_i(m.top1)} | {m.chance:.3f} "
                   f"| {_i(m.eer)} | {_i(m.tpr[0.01])} | {_i(m.tpr[0.001])} |")
    configs = list(entries[0].suite.sweep.top1)
    out += ["", "### Post-hoc attacker swept over capacity (MLP width x depth, trained to saturation)", "",
            "| bundle | chance | label floor | " + " | ".join(configs) + " | picked by validation | best on test |",
            "|" + "---|" * (5 + len(configs))]
    for e in entries:
        s = e.suite.sweep
        floor = e.suite.aggregation[0].label_floor if e.suite.aggregation[0].length == 1 else None
        out.append(f"| {e.name} | {e.suite.chance:.3f} | {_i(floor)} | " +
                   " | ".join(_i(s.top1.get(c)) for c in configs) + f" | {s.picked} | {s.best} |")
    out += _inversion_lines(entries)
    out += _targets(entries)
    return out


def _inversion_lines(entries) -> list[str]:
    matched = [e for e in entries if e.inversion_match]
    if not matched:
        return []
    n = next(iter(matched[0].inversion_match.values()))["n"]
    out = ["", "### Inversion: the decoder vs a white-box attacker (models/audit/whitebox.py)", "",
           "The decoder learns features -> input on the attacker's inputs; the white-box attacker holds the "
           "extractor's weights and optimises an input from the attacker's mean input until its noiseless "
           f"features match the release (Adam on the image's logits, total-variation prior). On the same {n} "
           "held-out inputs: SSIM to the own input, mean SSIM to other people's inputs of attack_test, and "
           "the share of (reconstruction, other person's input) pairs in which the own input is the more "
           "similar (0.5: the reconstruction says nothing about who it was).", "",
           "| bundle | attacker | SSIM to own input | SSIM to other people's | own more similar |", "|---|---|---|---|---|"]
    for e in matched:
        for name, m in e.inversion_match.items():
            out.append(f"| {e.name} | {name} | {m['ssim_own']:.3f} | {m['ssim_others']:.3f} "
                       f"| {m['own_beats_other']:.3f} |")
    return out


def target_figures(suite) -> dict:
    """The figures the issue's targets speak of, the attacker's most favourable reading of each."""
    agg = {a.length: a for a in suite.aggregation}
    link = {k.length: k for k in suite.linkage}
    first, last = min(agg), max(agg)
    top1 = max([agg[first].top1[agg[first].best].value, suite.sweep.top1[suite.sweep.best].value])
    eer1 = min([link[first].eer.value] + ([suite.metric.eer.value] if suite.metric else []))
    tpr1 = max([link[first].tpr[0.01].value] + ([suite.metric.tpr[0.01].value] if suite.metric else []))
    return {"top1_L1": top1, "label_floor_L1": agg[first].label_floor.value, "top1_Lmax": agg[last].top1[agg[last].best].value,
            "chance": suite.chance, "eer_L1": eer1, "eer_Lmax": link[last].eer.value, "tpr_1pct_L1": tpr1,
            "Lmax": last}


def _targets(entries) -> list[str]:
    t = TARGETS
    out = ["", "### Targets of issue 17 (reported, not enforced)", "",
           "Top-1 at L=1: the best of the L=1 set attackers and the sweep; EER and TPR at L=1: the better of "
           "linkage and the metric attacker.", "",
           f"| bundle | top-1 L=1 <= floor + {t['top1_over_floor_max']:.2f} | top-1 L=max <= "
           f"{t['top1_l100_over_chance_max']:.0f}x chance | EER L=1 >= {t['eer_l1_min']:.2f} | EER L=max >= "
           f"{t['eer_l100_min']:.2f} | TPR@1% L=1 <= {t['tpr_1pct_max']:.2f} |", "|" + "---|" * 6]
    for e in entries:
        f = target_figures(e.suite)
        out.append(
            f"| {e.name} | {_yes(f['top1_L1'] <= f['label_floor_L1'] + t['top1_over_floor_max'])} "
            f"({f['top1_L1']:.3f} vs {f['label_floor_L1']:.3f}) "
            f"| {_yes(f['top1_Lmax'] <= t['top1_l100_over_chance_max'] * f['chance'])} ({f['top1_Lmax']:.3f}, L={f['Lmax']}) "
            f"| {_yes(f['eer_L1'] >= t['eer_l1_min'])} ({f['eer_L1']:.3f}) "
            f"| {_yes(f['eer_Lmax'] >= t['eer_l100_min'])} ({f['eer_Lmax']:.3f}) "
            f"| {_yes(f['tpr_1pct_L1'] <= t['tpr_1pct_max'])} ({f['tpr_1pct_L1']:.3f}) |")
    return out
