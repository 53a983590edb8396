"""The standalone runtime ceiling: where the gateway's time goes on one core, without any messaging.

Three measurements, each on one thread (torch and ONNX Runtime alike), timed in the thread's CPU seconds
(``time.thread_time``) so that other processes on the machine do not inflate them: a rate here is per core.

1. the extractor alone, torch eager vs ONNX Runtime, at batch sizes 1..64 (inputs/s);
2. the gateway's image path in-process, stage by stage per input (msgpack + image decode, resize,
   extractor, FeatureMessage packing) at the gateway's micro-batch size, next to the extractor alone;
3. the speech front end per real utterance: pitch shift, log-mel and the extractor, as a real-time factor
   per core (processing seconds / audio seconds).

    python -m bench.runtime --out DIR [--bundle DIR ...] [--seconds S] [--utterances N]

Writes ``DIR/runtime.json`` and ``DIR/runtime.md`` and prints the machine, the settings and the tables.
Without ``--bundle`` it makes untrained bundles of the default architecture (same compute per input).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import header, machine, setup_lines, table_head

BATCHES = (1, 2, 4, 8, 16, 32, 64)
RUNTIMES = ("torch", "onnx")
ROUNDS = 5  # each rate is the best of this many rounds: the ceiling, least disturbed by other processes


def rate(step, items: int, seconds: float) -> float:
    """Items per CPU second of ``step()`` (which handles ``items`` inputs), best of ROUNDS rounds."""
    step()  # warm: first-call allocations, lazy initialisation
    best = 0.0
    for _ in range(ROUNDS):
        n, t0 = 0, time.thread_time()
        while True:
            step()
            n += 1
            dt = time.thread_time() - t0
            if dt >= seconds / ROUNDS and n >= 2:
                break
        best = max(best, n * items / dt)
    return best


def seconds_per_call(fn, args_list: list) -> list[float]:
    """CPU seconds of ``fn(*args)`` for each args tuple."""
    out = []
    for args in args_list:
        t0 = time.thread_time()
        fn(*args)
        out.append(time.thread_time() - t0)
    return out


def extractor_table(bundle: Path, seconds: float) -> dict:
    """{runtime: {batch: inputs/s}} for the extractor alone on preprocessed inputs."""
    from models.bundle import load_extractor

    table: dict[str, dict[int, float]] = {}
    for rt in RUNTIMES:
        ext = load_extractor(bundle, runtime=rt, threads=1)
        rng = np.random.default_rng(0)
        xs = [rng.random(ext.input_shape, dtype=np.float32) for _ in range(max(BATCHES))]
        table[rt] = {b: rate(lambda b=b: ext.extract_batch(xs[:b]), b, seconds) for b in BATCHES}
        print(f"  {bundle.name} {rt:5s} " + "  ".join(f"b{b}:{v:7.0f}" for b, v in table[rt].items()), flush=True)
    return table


def real_or_random(modality: str, n: int, data: Path | None) -> tuple[list, str]:
    """``n`` real inputs (ORL faces / FSDD utterances) when the data is there, else random stand-ins."""
    from sensors import sources

    sub = None if data is None else data / ("orl" if modality == "image" else "fsdd")
    if sub is not None and sub.is_dir():
        reader = sources.image_folder if modality == "image" else sources.wav_folder
        return list(itertools.islice(reader(sub), n)), str(sub)
    rng = np.random.default_rng(0)
    if modality == "image":
        return [rng.integers(0, 255, (112, 92), dtype=np.uint8) for _ in range(n)], "random 112x92"
    return [(0.1 * rng.standard_normal(int(8000 * rng.uniform(0.3, 0.8))).astype(np.float32), 8000)
            for _ in range(n)], "random 0.3-0.8 s noise at 8 kHz"


def image_path(bundle: Path, batch: int, codec: str, images: list, seconds: float) -> dict:
    """Per-input microseconds of each gateway stage at micro-batch ``batch``, on the best runtime."""
    from models.bundle import load_extractor
    from schemas import FeatureMessage
    from schemas.media import ImageFrame, decode_image

    ext = load_extractor(bundle, runtime="auto", threads=1)
    payloads = [ImageFrame.from_array(images[i % len(images)], device="cam1", seq=i, ts=time.time(),
                                      codec=codec).encode() for i in range(batch)]
    frames = [ImageFrame.decode(p) for p in payloads]
    raws = [decode_image(f) for f in frames]
    xs = [ext.preprocess(r) for r in raws]
    z = ext.extract_batch(xs)
    now = time.time()

    def pack():
        return [FeatureMessage.from_array(z[i], gateway="gw", device="cam1", seq=i, ts=now, ts_sent=now,
                                          task=ext.task, model=ext.model_id, reply="privedge:results:{gw}").encode()
                for i in range(batch)]

    stages = {
        "msgpack decode": lambda: [ImageFrame.decode(p) for p in payloads],
        f"{codec} decode": lambda: [decode_image(f) for f in frames],
        "resize to 64x64": lambda: [ext.preprocess(r) for r in raws],
        f"extractor ({ext.runtime})": lambda: ext.extract_batch(xs),
        "FeatureMessage pack": pack,
    }
    us = {name: 1e6 / rate(step, batch, seconds) for name, step in stages.items()}
    total = sum(us.values())
    return {"runtime": ext.runtime, "batch": batch, "codec": codec, "us_per_input": us,
            "path_per_s": 1e6 / total, "extractor_share": us[f"extractor ({ext.runtime})"] / total}


def speech_front_end(bundle: Path, utterances: list) -> dict:
    """Per utterance: resample, pitch shift, log-mel; the extractor at batch 1 and 16 on both runtimes.
    Real-time factor per core = processing seconds / audio seconds (one thread)."""
    import librosa

    from models.bundle import load_extractor

    from models.speech import SpeechConfig, SpeechFrontEnd

    spec = {k: v for k, v in load_extractor(bundle).manifest["input"].items() if k not in ("kind", "shape")}
    fe = SpeechFrontEnd.from_config(SpeechConfig.from_dict(spec))  # the bundle's front end, as the gateway runs it
    fe.warm_up()
    rng = np.random.default_rng(0)
    waves = [fe.resample(np.asarray(w, np.float32), int(r)) for w, r in utterances]
    audio_s = sum(len(w) for w in waves) / fe.config.rate
    t_resample = sum(seconds_per_call(fe.resample, [(np.asarray(w, np.float32), int(r)) for w, r in utterances]))
    shifts = [fe.draw_shift(rng) for _ in waves]
    shifted = [fe.shift(w, s) for w, s in zip(waves, shifts)]
    t_shift = sum(seconds_per_call(fe.shift, list(zip(waves, shifts))))
    t_mel = sum(seconds_per_call(fe.log_mel, [(w,) for w in shifted]))
    c = fe.config  # librosa's own functions, which models.fast_audio replaces with the same outputs
    t_shift_ref = sum(seconds_per_call(lambda w, s: librosa.effects.pitch_shift(
        w, sr=c.rate, n_steps=s, res_type="soxr_hq", n_fft=512), list(zip(waves, shifts))))
    t_mel_ref = sum(seconds_per_call(lambda w: librosa.feature.melspectrogram(
        y=w, sr=c.rate, n_fft=c.n_fft, hop_length=c.hop, n_mels=c.n_mels, fmax=c.rate / 2), [(w,) for w in shifted]))
    xs = [fe.log_mel(w) for w in shifted]
    net = {}
    for rt in RUNTIMES:
        e = load_extractor(bundle, runtime=rt, threads=1)
        for b in (1, 16):
            net[f"{rt} batch {b}"] = 1.0 / rate(lambda b=b: [e.extract_batch(xs[i:i + b])
                                                                 for i in range(0, len(xs), b)], len(xs), 1.0)
    best_net = min(net.values()) * len(xs)  # seconds for all utterances
    n = len(waves)
    per = {"resample": t_resample / n, "pitch shift": t_shift / n, "log-mel": t_mel / n,
           "pitch shift, librosa reference": t_shift_ref / n, "mel spectrogram, librosa reference": t_mel_ref / n,
           **{f"extractor {k}": v for k, v in net.items()}}
    front = t_resample + t_shift + t_mel
    return {"utterances": n, "audio_seconds": audio_s, "mean_utterance_s": audio_s / n,
            "ms_per_utterance": {k: v * 1e3 for k, v in per.items()},
            "rtf_per_core": (front + best_net) / audio_s,
            "rtf_front_end_only": front / audio_s, "utterances_per_s_per_core": n / (front + best_net)}


def markdown(result: dict) -> str:
    lines = header("privedge runtime ceiling (one thread)", result["machine"], result["settings"])
    for modality, r in result["extractor"].items():
        lines += [f"## Extractor alone, {modality} ({r['bundle']}, {r['macs']:,} multiply-adds per input)", "",
                  *table_head("runtime", *(f"batch {b}" for b in BATCHES))]
        for rt, row in r["inputs_per_s"].items():
            lines.append(f"| {rt} | " + " | ".join(f"{row[str(b)]:.0f}" for b in BATCHES) + " |")
        best = r["best"]
        lines += ["", f"Ceiling: {best['inputs_per_s']:.0f} inputs/s ({best['runtime']}, batch {best['batch']}); "
                      f"ONNX Runtime / torch at their best batch: {r['onnx_over_torch']:.2f}x.", ""]
    for p in result["image_path"]:
        lines += [f"## Gateway image path in-process ({p['codec']}, batch {p['batch']}, {p['runtime']})", "",
                  *table_head("stage", "µs per input")]
        lines += [f"| {k} | {v:.1f} |" for k, v in p["us_per_input"].items()]
        lines += [f"| **total** | **{1e6 / p['path_per_s']:.1f}** ({p['path_per_s']:.0f} inputs/s; extractor "
                  f"{100 * p['extractor_share']:.0f}% of it) |", ""]
    s = result["speech"]
    lines += [f"## Speech front end ({s['utterances']} utterances, {s['mean_utterance_s']:.2f} s mean, "
              f"{result['settings']['speech_source']})", "", *table_head("stage", "ms per utterance")]
    lines += [f"| {k} | {v:.2f} |" for k, v in s["ms_per_utterance"].items()]
    lines += ["", f"Real-time factor per core (resample + pitch shift + log-mel + best extractor): "
                  f"{s['rtf_per_core']:.4f} ({s['utterances_per_s_per_core']:.0f} utterances/s per core); "
                  f"front end alone {s['rtf_front_end_only']:.4f}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runtime", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for runtime.json and runtime.md")
    p.add_argument("--bundle", action="append", help="bundle directory, one per modality (default: untrained)")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure (default 2)")
    p.add_argument("--utterances", type=int, default=100, help="FSDD utterances for the speech figures")
    p.add_argument("--gateway-batch", type=int, action="append", help="micro-batch of the image path (repeatable)")
    p.add_argument("--codec", choices=("jpeg", "png", "raw"), default="jpeg", help="camera codec (default jpeg)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                   help="dataset root with orl/ and fsdd/ ('none': random inputs)")
    args = p.parse_args(argv)

    import torch

    from bench.cli import bundles_by_modality
    from models.bundle import load_extractor
    from models.nets import count_cost

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = None if args.data == "none" else Path(args.data)
    bundles = bundles_by_modality(args.bundle, ("image", "speech"), out)
    images, image_source = real_or_random("image", 64, data)
    utts, speech_source = real_or_random("speech", args.utterances, data)
    settings = {"seconds": args.seconds, "rounds": ROUNDS, "threads": 1, "codec": args.codec,
                "bundles": {m: str(b) for m, b in bundles.items()}, "image_source": image_source,
                "speech_source": speech_source}
    result = {"machine": machine(), "settings": settings, "extractor": {}, "image_path": []}
    print(setup_lines(result["machine"], settings), flush=True)
    for modality, b in bundles.items():
        table = extractor_table(b, args.seconds)
        best = max(((v, rt, bs) for rt, row in table.items() for bs, v in row.items()))
        ext = load_extractor(b)
        result["extractor"][modality] = {
            "bundle": str(b), "macs": count_cost(ext.module, ext.input_shape).macs,
            "inputs_per_s": {rt: {str(k): v for k, v in row.items()} for rt, row in table.items()},
            "best": {"inputs_per_s": best[0], "runtime": best[1], "batch": best[2]},
            "onnx_over_torch": max(table["onnx"].values()) / max(table["torch"].values())}
    for batch in args.gateway_batch or [8, 32]:
        r = image_path(bundles["image"], batch, args.codec, images, args.seconds)
        result["image_path"].append(r)
        print(f"  image path batch {batch}: {r['path_per_s']:.0f} inputs/s "
              + ", ".join(f"{k} {v:.0f} us" for k, v in r["us_per_input"].items()), flush=True)
    result["speech"] = speech_front_end(bundles["speech"], utts)
    (out / "runtime.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "runtime.md").write_text(md)
    print(md)
    print(f"wrote {out / 'runtime.json'} and {out / 'runtime.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
