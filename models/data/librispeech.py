"""LibriSpeech excerpt: ``<reader>/<reader>-<chapter>-<utterance>.flac``, 16 kHz, with ``SPEAKERS.TXT``.

Protocol "librispeech" (issue: privacy at scale): the primary task is the reader's sex from a short window,
the sensitive attribute is the reader.

- Windows: every utterance is cut into non-overlapping windows of :data:`WINDOW_S` seconds (the tail
  shorter than a window is dropped).
- People: the readers are split into a model half and an attack half by ``seed``, separately for women and
  men, so that both halves keep the corpus's balance. The model never sees an attack reader.
- Attack train / test, kept apart in time: a reader with several utterances gives their first 70 % of
  utterances (sorted by name) to attack-train and the rest to attack-test. A reader with one recording
  (most of train-clean-100) gives the first 70 % of its windows to attack-train, then one window is left
  out, then the rest go to attack-test: no attack-test window touches or overlaps an attack-train window,
  and at least :data:`WINDOW_S` seconds of speech separate the two.

Decoded windows are cached (:mod:`models.data.cache`) keyed by the file list.
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

FILE_RE = re.compile(r"^(\d+)-(\d+)-(\d+)\.flac$")
SEXES = ["female", "male"]
WINDOW_S = 1.5
"""Window length, seconds (the issue asks for 1-2 s)."""
ATTACK_TRAIN_FRACTION = 0.7
SMALL_READERS_PER_SEX = 24
"""size="small": this many readers of each sex (the multi-utterance readers first), for CI."""


def is_librispeech(root: str | Path) -> bool:
    """True when ``root`` holds ``SPEAKERS.TXT`` and reader folders of ``.flac`` files."""
    root = Path(root)
    return root.is_dir() and (root / "SPEAKERS.TXT").is_file() and any(root.glob("*/*.flac"))


def read_sexes(path: str | Path) -> dict[str, str]:
    """reader id -> "F" | "M" from a ``SPEAKERS.TXT`` (``ID | SEX | SUBSET | MINUTES | NAME``; ``;`` comments)."""
    sexes = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[0].isdigit() and fields[1] in ("F", "M"):
            sexes[fields[0]] = fields[1]
    return sexes


def _files(root: Path, size: str) -> list[tuple[str, str, Path]]:
    """(reader, utterance name, path), sorted; readers without a known sex are left out (and logged)."""
    sexes = read_sexes(root / "SPEAKERS.TXT")
    by_reader: dict[str, list[Path]] = {}
    for p in root.glob("*/*.flac"):
        m = FILE_RE.match(p.name)
        if m and m.group(1) == p.parent.name:
            by_reader.setdefault(m.group(1), []).append(p)
    unknown = sorted(r for r in by_reader if r not in sexes)
    if unknown:
        log.warning("LibriSpeech: %d readers without a sex in SPEAKERS.TXT left out: %s", len(unknown), unknown[:5])
    readers = sorted((r for r in by_reader if r in sexes), key=int)
    if size == "small":
        keep = []
        for sex in ("F", "M"):
            of_sex = [r for r in readers if sexes[r] == sex]
            of_sex.sort(key=lambda r: (-len(by_reader[r]), int(r)))  # the multi-utterance readers first
            keep += of_sex[:SMALL_READERS_PER_SEX]
        readers = sorted(keep, key=int)
    return [(r, p.stem, p) for r in readers for p in sorted(by_reader[r])]


def _windows(wave: np.ndarray, rate: int) -> list[np.ndarray]:
    n = int(round(WINDOW_S * rate))
    return [wave[i * n:(i + 1) * n] for i in range(len(wave) // n)]


def load_librispeech(root: str | Path, *, size: str = "full") -> tuple[Samples, np.ndarray, np.ndarray]:
    """Every window as one Samples, plus for each window its utterance index (within the reader, in name
    order) and its window index (within the utterance), both int64 (N,)."""
    root = Path(root)
    if not is_librispeech(root):
        raise FileNotFoundError(f"no LibriSpeech readers (SPEAKERS.TXT, <reader>/*.flac) under {root}")
    sexes = read_sexes(root / "SPEAKERS.TXT")
    files = _files(root, size)
    stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for _, _, p in files]
    key = cache_key("librispeech", {"root": str(root.resolve()), "files": stats, "window_s": WINDOW_S})
    cached = load_cached(key)
    readers = sorted({r for r, _, _ in files}, key=int)
    if cached is not None:
        waves, rate = unpack_waves(cached), int(cached["rate"])
        owner, utt, win = cached["owner"], cached["utt"], cached["win"]
    else:
        waves, owner, utt, win, rates = [], [], [], [], set()
        utt_no: dict[str, int] = {}
        for reader, _, path in tqdm(files, desc="decoding LibriSpeech", unit="file", leave=False,
                                    disable=len(files) < 100):
            wave, r = load_wav(path)
            rates.add(r)
            u = utt_no.setdefault(reader, 0)
            utt_no[reader] = u + 1
            for k, w in enumerate(_windows(wave, r)):
                waves.append(w)
                owner.append(readers.index(reader))
                utt.append(u)
                win.append(k)
        if len(rates) != 1:
            raise ValueError(f"LibriSpeech files under {root} mix sample rates {sorted(rates)}")
        rate = rates.pop()
        owner, utt, win = (np.array(a, dtype=np.int64) for a in (owner, utt, win))
        save_cached(key, {**pack_waves(waves), "rate": np.array(rate), "owner": owner, "utt": utt, "win": win})
    samples = Samples(
        modality="speech", x=waves,
        primary=np.array([SEXES.index("female" if sexes[readers[o]] == "F" else "male") for o in owner],
                         dtype=np.int64),
        identity=np.asarray(owner, dtype=np.int64),
        primary_names=list(SEXES), identity_names=readers, rate=rate,
    )
    log.info("LibriSpeech: %d windows of %.1f s from %d readers", len(samples), WINDOW_S, len(readers))
    return samples, np.asarray(utt, dtype=np.int64), np.asarray(win, dtype=np.int64)


def attack_sides(identity: np.ndarray, utt: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(attack-train, attack-test) boolean masks over the windows, kept apart in time (module docstring);
    the gap windows are in neither."""
    train = np.zeros(len(identity), dtype=bool)
    test = np.zeros(len(identity), dtype=bool)
    for person in np.unique(identity):
        mine = identity == person
        n_utt = int(utt[mine].max()) + 1
        if n_utt > 1:
            cut = int(np.clip(round(ATTACK_TRAIN_FRACTION * n_utt), 1, n_utt - 1))
            train |= mine & (utt < cut)
            test |= mine & (utt >= cut)
            continue
        n_win = int(win[mine].max()) + 1
        if n_win < 3:  # too short to keep a gap: train only
            train |= mine
            continue
        cut = int(np.clip(round(ATTACK_TRAIN_FRACTION * n_win), 1, n_win - 2))
        train |= mine & (win < cut)
        test |= mine & (win > cut)  # window ``cut`` is the gap
    return train, test


def split_by_sex(identity_sex: np.ndarray, seed: int) -> np.ndarray:
    """The model half of the people (sorted identity indices): half of each sex, chosen by ``seed``
    (the extra one of an odd count goes to the model)."""
    rng = np.random.default_rng(seed)
    model = []
    for sex in np.unique(identity_sex):
        people = rng.permutation(np.flatnonzero(identity_sex == sex))
        model.append(people[:(len(people) + 1) // 2])
    return np.sort(np.concatenate(model)).astype(np.int64)


def librispeech_protocol(root: str | Path, *, seed: int = 0, size: str = "full") -> Protocol:
    """Protocol "librispeech": speaker sex on unseen readers; see the module docstring."""
    samples, utt, win = load_librispeech(root, size=size)
    sex_of = np.zeros(len(samples.identity_names), dtype=np.int64)
    sex_of[samples.identity] = samples.primary
    model_people = split_by_sex(sex_of, seed)
    is_model = np.isin(samples.identity, model_people)
    train_side, test_side = attack_sides(samples.identity, utt, win)
    return Protocol(
        name="librispeech", task="sex",
        train=samples.subset(is_model), test=samples.subset(~is_model),
        attack_train=samples.subset(~is_model & train_side), attack_test=samples.subset(~is_model & test_side),
    )
