"""The Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{take}.wav``, 8 kHz mono.

Protocol "fsdd" (DESIGN.md): the official split, takes 0-4 of every digit and speaker are the test set,
takes 5-49 the training set; the identity attacker trains on the training takes and is tested on the
test takes (6 speakers, chance 1/6). Decoded waveforms are cached in one ``.npz`` keyed by the file
list (names, sizes, modification times), so a second load takes well under a second.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.data.cache import cache_key, load_cached, pack_waves, save_cached, unpack_waves
from models.data.samples import Protocol, Samples
from models.preprocess import load_wav

log = logging.getLogger(__name__)

FILE_RE = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
DIGITS = [str(d) for d in range(10)]
TEST_TAKES = range(0, 5)
SMALL_MAX_TAKE = 19
"""size="small" keeps takes 0-19: the official test takes 0-4 and training takes 5-19."""


def recordings_dir(root: str | Path) -> Path:
    """The folder holding the WAV files: ``root/recordings`` or ``root`` itself."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"FSDD folder not found: {root}")
    for cand in (root / "recordings", root):
        if cand.is_dir() and any(FILE_RE.match(p.name) for p in cand.iterdir()):
            return cand
    raise FileNotFoundError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) under {root}")


def is_fsdd(root: str | Path) -> bool:
    """True when ``root`` (or ``root/recordings``) holds FSDD-named WAV files."""
    try:
        recordings_dir(root)
    except FileNotFoundError:
        return False
    return True


def load_fsdd(root: str | Path, *, size: str = "full") -> tuple[Samples, np.ndarray]:
    """Every recording as one Samples, plus the take number of each (int64 (N,)).

    Files are sorted by (speaker, digit, take); identity names are the speakers, sorted.
    """
    rec = recordings_dir(root)
    entries = []
    for p in rec.iterdir():
        m = FILE_RE.match(p.name)
        if m:
            digit, speaker, take = int(m.group(1)), m.group(2), int(m.group(3))
            if size == "full" or take <= SMALL_MAX_TAKE:
                entries.append((speaker, digit, take, p))
    entries.sort(key=lambda e: e[:3])
    stats = [(e[3].name, e[3].stat().st_size, e[3].stat().st_mtime_ns) for e in entries]
    key = cache_key("fsdd", {"root": str(rec.resolve()), "files": stats})
    cached = load_cached(key)
    if cached is not None:
        waves, rate = unpack_waves(cached), int(cached["rate"])
    else:
        waves, rates = [], set()
        for e in tqdm(entries, desc="decoding FSDD", unit="file", disable=len(entries) < 500, leave=False):
            wave, r = load_wav(e[3])
            waves.append(wave)
            rates.add(r)
        if len(rates) != 1:
            raise ValueError(f"FSDD recordings under {rec} mix sample rates {sorted(rates)}")
        rate = rates.pop()
        save_cached(key, {**pack_waves(waves), "rate": np.array(rate)})
    speakers = sorted({e[0] for e in entries})
    samples = Samples(
        modality="speech", x=waves,
        primary=np.array([e[1] for e in entries], dtype=np.int64),
        identity=np.array([speakers.index(e[0]) for e in entries], dtype=np.int64),
        primary_names=list(DIGITS), identity_names=speakers, rate=rate,
    )
    log.info("FSDD: %d recordings, %d speakers, %d Hz from %s", len(samples), len(speakers), rate, rec)
    return samples, np.array([e[2] for e in entries], dtype=np.int64)


def fsdd_protocol(root: str | Path, *, size: str = "full") -> Protocol:
    """Protocol "fsdd": train = takes 5-49, test = takes 0-4; attack_train = train, attack_test = test."""
    samples, takes = load_fsdd(root, size=size)
    is_test = np.isin(takes, list(TEST_TAKES))
    train, test = samples.subset(~is_test), samples.subset(is_test)
    return Protocol(name="fsdd", task="digit", train=train, test=test, attack_train=train, attack_test=test)
