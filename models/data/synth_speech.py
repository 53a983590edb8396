"""Spoken digits "zero".."nine" synthesised with espeak-ng by many distinct voices, at 8 kHz.

The built-in stand-in for FSDD, so the demo and smoke tests run with no dataset. A "speaker" is a fixed
combination of an espeak-ng voice variant (``m1``..``m8``, ``f1``..``f5``, ``klatt``..., each a different
glottal source and formant set), an English accent (``en``, ``en-us``, ``en-gb-scotland``...), a base
pitch (``-p``) and a base speed (``-s``). Each take of a speaker jitters pitch and speed a little and adds
a random gain and background noise, so no two takes are identical.

One espeak-ng process speaks all ten digits of a take with long pauses between words; the wave is cut at
the pauses (a take that does not cut into exactly ten words falls back to one process per word). The
processes run in parallel and the result is cached, so the small set takes a few seconds once and well
under a second afterwards.

Protocol "synthetic-speech" has the ORL structure: speakers are split into disjoint model / attack halves
(by seed); the attacker trains on the first 70% of each attack speaker's takes and is tested on the rest.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from models.data.cache import cache_key, load_cached, pack_waves, save_cached, unpack_waves
from models.data.samples import Protocol, Samples, split_people, unseen_people_protocol

log = logging.getLogger(__name__)

RATE = 8000
"""Output sample rate, Hz (as FSDD)."""
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS = [str(d) for d in range(10)]
SIZES = {"full": (40, 10), "small": (24, 4)}
"""size -> (speakers, takes of each digit per speaker)."""
ATTACK_TRAIN_FRACTION = 0.7
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "croak", "Andy", "annie", "linda", "max", "paul", "steph"]
ACCENTS = ["en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp"]
GENERATOR_VERSION = 1
_WORD_GAP = 40      # espeak -g: extra pause between words, in units of 10 ms
_SILENCE = 0.003    # peak amplitude under which a 256-sample block counts as silence
_MIN_PAUSE_S = 0.2  # pauses shorter than this are inside a word (the closure of "six", "eight")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: espeak-ng voice ``{accent}+{variant}``, base pitch 0-99, base speed in words/min."""

    accent: str
    variant: str
    pitch: int
    speed: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}-p{self.pitch}-s{self.speed}"


def make_voices(n: int, seed: int) -> list[Voice]:
    """``n`` distinct speakers, deterministic by ``seed``; no two share a variant and accent."""
    rng = np.random.default_rng([seed, 7])
    combos = [(a, v) for v in VARIANTS for a in ACCENTS]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} distinct synthetic speakers, asked for {n}")
    # Spread over variants first (the variant changes the voice most); a variant's k-th use takes the
    # k-th accent after its own random starting accent, so no (accent, variant) pair repeats.
    order = rng.permutation(len(VARIANTS))
    first_accent = rng.integers(len(ACCENTS), size=len(VARIANTS))
    picks = []
    for i in range(n):
        v = order[i % len(VARIANTS)]
        a = (first_accent[v] + i // len(VARIANTS)) % len(ACCENTS)
        picks.append(combos[v * len(ACCENTS) + a])
    return [Voice(a, v, int(rng.integers(20, 80)), int(rng.integers(130, 190))) for a, v in picks]


@lru_cache(maxsize=1)
def espeak_version() -> str:
    """``espeak-ng --version`` (part of the cache key: another version speaks differently)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (the set-up script installs it): "
                                "it is needed for synthetic speech")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _speak(text: str, voice: str, pitch: int, speed: int, gap: int = 0) -> tuple[np.ndarray, int]:
    """Run espeak-ng once -> (float32 wave in [-1, 1], rate Hz)."""
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-g", str(gap), "--stdout", text]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"espeak-ng failed for voice {voice}: {e.stderr.decode(errors='replace')}") from e
    if len(out) < 44 or out[:4] != b"RIFF" or out[36:40] != b"data":
        raise RuntimeError(f"espeak-ng gave no WAV for voice {voice} ({len(out)} bytes)")
    rate = int.from_bytes(out[24:28], "little")  # the header's size fields are unset when streaming
    pcm = np.frombuffer(out[44:44 + (len(out) - 44) // 2 * 2], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def _cut_words(wave: np.ndarray, rate: int, block: int = 256) -> list[np.ndarray]:
    """Cut a wave at pauses longer than _MIN_PAUSE_S; each piece keeps 20 ms of silence either side."""
    n_blocks = len(wave) // block
    loud = np.abs(wave[:n_blocks * block].reshape(n_blocks, block)).max(axis=1) >= _SILENCE
    idx = np.flatnonzero(loud)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) * block > _MIN_PAUSE_S * rate)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    pad = int(0.02 * rate)
    return [wave[max(0, s * block - pad):min(len(wave), e * block + pad)] for s, e in zip(starts, ends)]


def _take(voice: Voice, seed: int, speaker: int, take: int) -> list[np.ndarray]:
    """The ten digits of one take of one speaker, as float32 waves at RATE Hz."""
    rng = np.random.default_rng([seed, 11, speaker, take])
    pitch = int(np.clip(voice.pitch + rng.integers(-5, 6), 0, 99))
    speed = int(voice.speed * rng.uniform(0.92, 1.08))
    spec = f"{voice.accent}+{voice.variant}"
    wave, rate = _speak(", ".join(WORDS), spec, pitch, speed, _WORD_GAP)
    words = _cut_words(wave, rate)
    if len(words) != len(WORDS):
        log.debug("voice %s take %d cut into %d words; speaking word by word", voice.name, take, len(words))
        words = [_speak(w, spec, pitch, speed)[0] for w in WORDS]
        words = [max(_cut_words(w, rate), key=len, default=w) for w in words]
    out = []
    for w in words:
        w8 = resample_poly(w, RATE, rate).astype(np.float32)
        w8 *= rng.uniform(0.5, 1.0) / max(float(np.abs(w8).max()), 1e-3)
        snr_db = rng.uniform(20.0, 40.0)
        noise = rng.normal(0.0, float(np.sqrt(np.mean(w8 ** 2))) * 10 ** (-snr_db / 20), len(w8))
        out.append(np.clip(w8 + noise, -1.0, 1.0).astype(np.float32))
    return out


@dataclass(frozen=True)
class SpeechSet:
    """Generated utterances: waves (float32 at RATE Hz); digit, speaker, take: int64 (N,); voices by speaker."""

    waves: list[np.ndarray]
    digit: np.ndarray
    speaker: np.ndarray
    take: np.ndarray
    voices: list[Voice]


def generate_speech(n_speakers: int, takes: int, *, seed: int = 0, workers: int = 4) -> SpeechSet:
    """Generate (and cache) ``n_speakers x 10 digits x takes`` utterances, ordered by speaker, take, digit.

    Deterministic by ``seed`` for a given espeak-ng version. ``workers``: parallel espeak-ng processes.
    """
    if n_speakers < 2 or takes < 2:
        raise ValueError(f"need >= 2 speakers and >= 2 takes, got {n_speakers} x {takes}")
    voices = make_voices(n_speakers, seed)
    key = cache_key("synthetic-speech", {"v": GENERATOR_VERSION, "espeak": espeak_version(),
                                         "voices": [v.name for v in voices], "takes": takes, "seed": seed})
    jobs = [(s, t) for s in range(n_speakers) for t in range(takes)]
    cached = load_cached(key)
    if cached is not None:
        waves = unpack_waves(cached)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(lambda j: _take(voices[j[0]], seed, *j), jobs), total=len(jobs),
                                desc="synthesising speech", unit="take", disable=len(jobs) < 200, leave=False))
        waves = [w for words in results for w in words]
        save_cached(key, pack_waves(waves))
    n_words = len(WORDS)
    return SpeechSet(
        waves=waves,
        digit=np.tile(np.arange(n_words), len(jobs)).astype(np.int64),
        speaker=np.repeat([s for s, _ in jobs], n_words).astype(np.int64),
        take=np.repeat([t for _, t in jobs], n_words).astype(np.int64),
        voices=voices,
    )


def synthetic_speech_protocol(*, seed: int = 0, size: str = "full") -> Protocol:
    """Protocol "synthetic-speech", task "digit": disjoint model / attack speakers; attack takes 70 / 30."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    n_speakers, takes = SIZES[size]
    speech = generate_speech(n_speakers, takes, seed=seed)
    samples = Samples(modality="speech", x=speech.waves, primary=speech.digit, identity=speech.speaker,
                      primary_names=list(DIGITS), identity_names=[v.name for v in speech.voices], rate=RATE)
    model_people, _ = split_people(speech.speaker, seed)
    attack_train_takes = int(np.clip(round(ATTACK_TRAIN_FRACTION * takes), 1, takes - 1))
    return unseen_people_protocol("synthetic-speech", "digit", samples, model_people,
                                  speech.take < attack_train_takes)
