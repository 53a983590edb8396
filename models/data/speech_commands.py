"""Speech Commands (v0.01 excerpt): ``<word>/<speaker>_nohash_<n>.wav``, one-second keywords at 16 kHz.

Protocol "speech-commands": the primary task is the keyword, the sensitive attribute the speaker (the hash
before ``_nohash_``). The speakers are split into a model half and an attack half by ``seed``
(:func:`models.data.samples.split_people`); the attack speakers' clips are split about 70 / 30 per speaker
into attack-train and attack-test (a speaker with one clip trains the attacker only). Clips shorter than a
second are kept as they are (the front end pads). ``size="small"`` keeps the ten most frequent words.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from models.data.cache import cache_key, load_cached, pack_waves, save_cached, unpack_waves
from models.data.samples import Protocol, Samples, split_people, split_per_person, unseen_people_protocol
from models.preprocess import load_wav

log = logging.getLogger(__name__)

FILE_RE = re.compile(r"^([0-9a-f]+)_nohash_(\d+)\.wav$")
SMALL_WORDS = 10


def _entries(root: Path) -> list[tuple[str, str, Path]]:
    """(word, speaker, path) of every clip, sorted."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for p in sorted(d.iterdir()):
            m = FILE_RE.match(p.name)
            if m:
                out.append((d.name, m.group(1), p))
    return out


def is_speech_commands(root: str | Path) -> bool:
    """True when ``root`` holds word folders of ``<speaker>_nohash_<n>.wav`` clips."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any(FILE_RE.match(p.name) for d in root.iterdir() if d.is_dir() for p in d.glob("*.wav"))


def load_speech_commands(root: str | Path, *, size: str = "full") -> Samples:
    root = Path(root)
    entries = _entries(root)
    if not entries:
        raise FileNotFoundError(f"no Speech Commands clips (<word>/<speaker>_nohash_<n>.wav) under {root}")
    if size == "small":
        counts: dict[str, int] = {}
        for w, _, _ in entries:
            counts[w] = counts.get(w, 0) + 1
        keep = set(sorted(counts, key=lambda w: (-counts[w], w))[:SMALL_WORDS])
        entries = [e for e in entries if e[0] in keep]
    stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for _, _, p in entries]
    key = cache_key("speech_commands", {"root": str(root.resolve()), "files": stats})
    cached = load_cached(key)
    if cached is not None:
        waves, rate = unpack_waves(cached), int(cached["rate"])
    else:
        decoded = [load_wav(p) for _, _, p in entries]
        rates = {r for _, r in decoded}
        if len(rates) != 1:
            raise ValueError(f"Speech Commands clips under {root} mix sample rates {sorted(rates)}")
        waves, rate = [w for w, _ in decoded], rates.pop()
        save_cached(key, {**pack_waves(waves), "rate": np.array(rate)})
    words = sorted({w for w, _, _ in entries})
    speakers = sorted({s for _, s, _ in entries})
    samples = Samples(
        modality="speech", x=waves,
        primary=np.array([words.index(w) for w, _, _ in entries], dtype=np.int64),
        identity=np.array([speakers.index(s) for _, s, _ in entries], dtype=np.int64),
        primary_names=words, identity_names=speakers, rate=rate,
    )
    log.info("Speech Commands: %d clips, %d words, %d speakers from %s", len(samples), len(words),
             len(speakers), root)
    return samples


def speech_commands_protocol(root: str | Path, *, seed: int = 0, size: str = "full") -> Protocol:
    """Protocol "speech-commands": keywords on unseen speakers; see the module docstring."""
    samples = load_speech_commands(root, size=size)
    model_people, attack_people = split_people(samples.identity, seed)
    train_idx, _ = split_per_person(samples.identity, attack_people, seed)
    attack_train = np.zeros(len(samples), dtype=bool)
    attack_train[train_idx] = True
    return unseen_people_protocol("speech-commands", "keyword", samples, model_people, attack_train)
