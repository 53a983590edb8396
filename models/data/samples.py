"""The two containers every dataset adapter returns: labelled samples and an evaluation protocol."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODALITIES = ("image", "speech")


@dataclass(frozen=True)
class Samples:
    """A labelled set of inputs of one modality.

    Attributes:
        modality: "image" | "speech".
        x: image: float32 array (N, 1, 64, 64) in [0, 1], already passed through
            ``models.preprocess.image_to_input``; speech: list of N float32 mono waveforms in [-1, 1]
            at ``rate`` Hz (raw, variable length).
        primary: int64 (N,), index into ``primary_names`` (the primary task's label).
        identity: int64 (N,), index into ``identity_names`` (the person / speaker).
        primary_names: label names of the primary task.
        identity_names: names of the people; shared by all the splits of one protocol.
        rate: speech sample rate in Hz; None for images.
        sources: the file each sample was read from, where the adapter knows it (LFW's photographs: the
            face recognition baseline of the audit reads the whole photograph); None otherwise.
    """

    modality: str
    x: np.ndarray | list[np.ndarray]
    primary: np.ndarray
    identity: np.ndarray
    primary_names: list[str]
    identity_names: list[str]
    rate: int | None
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        n = len(self.x)
        if self.primary.shape != (n,) or self.identity.shape != (n,):
            raise ValueError(
                f"labels must have shape ({n},): primary {self.primary.shape}, identity {self.identity.shape}")
        if self.modality == "image":
            if not isinstance(self.x, np.ndarray) or self.x.ndim != 4 or self.x.shape[1] != 1:
                raise ValueError(f"image x must be an array (N, 1, H, W), got {getattr(self.x, 'shape', type(self.x))}")
            if self.rate is not None:
                raise ValueError("image samples have no rate")
        elif self.rate is None or self.rate <= 0:
            raise ValueError(f"speech samples need a positive rate, got {self.rate}")
        if self.sources is not None and len(self.sources) != n:
            raise ValueError(f"sources must name {n} files, got {len(self.sources)}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx) -> "Samples":
        """The samples at ``idx`` (int indices or a boolean mask), with the same label names."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        x = self.x[idx] if isinstance(self.x, np.ndarray) else [self.x[i] for i in idx]
        sources = None if self.sources is None else [self.sources[i] for i in idx]
        return Samples(self.modality, x, self.primary[idx], self.identity[idx],
                       self.primary_names, self.identity_names, self.rate, sources)


@dataclass(frozen=True)
class Protocol:
    """A fixed evaluation protocol (DESIGN.md, "Evaluation protocols").

    Attributes:
        name: "fsdd", "orl-unseen", "lfw-unseen", "synthetic-faces", "synthetic-speech", "csv" or "folder";
            ``-detected`` appended when the inputs are face detector crops.
        task: primary task name: "glasses" | "digit" | the CSV file's / folder's stem.
        train: the model (and its PCA) is fitted on these only.
        test: held-out primary accuracy is measured on these.
        attack_train: the identity attacker trains on features of these ...
        attack_test: ... and is tested on these (same people as attack_train, other samples).
        crop: for a protocol on face detector crops, ``models.data.face_crops.CropReport.as_dict()``
            (how many frames were cropped, how many had no face and were left out); None otherwise.
    """

    name: str
    task: str
    train: Samples
    test: Samples
    attack_train: Samples
    attack_test: Samples
    crop: dict | None = None

    @property
    def identity_chance(self) -> float:
        """Top-1 accuracy of guessing the most frequent attack_train identity on attack_test."""
        counts = np.bincount(self.attack_train.identity, minlength=len(self.attack_train.identity_names))
        return float(np.mean(self.attack_test.identity == int(np.argmax(counts))))


def split_people(identities: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the distinct people into two disjoint halves, deterministically by ``seed``.

    Returns (model_people, attack_people): sorted int arrays of identity indices; the model half gets
    the extra person when the count is odd.
    """
    people = np.unique(identities)
    if len(people) < 2:
        raise ValueError(f"need at least 2 people to split into model and attack halves, got {len(people)}")
    order = np.random.default_rng(seed).permutation(people)
    half = (len(people) + 1) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def split_per_person(identities: np.ndarray, people: np.ndarray, seed: int,
                     train_fraction: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Split each person's samples into attacker train / test index arrays (about 70 / 30 each).

    Every person with at least 2 samples gets at least one of each; a person with a single sample goes
    to train only. Deterministic by ``seed``. Returns sorted int64 index arrays.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for person in people:
        idx = np.flatnonzero(identities == person)
        idx = rng.permutation(idx)
        n_train = len(idx) if len(idx) < 2 else int(np.clip(round(train_fraction * len(idx)), 1, len(idx) - 1))
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def unseen_people_protocol(name: str, task: str, samples: Samples, model_people: np.ndarray,
                           attack_train_mask: np.ndarray, crop=None) -> Protocol:
    """The ORL-style protocol: the model sees ``model_people`` only; the attack uses the others.

    Args:
        samples: everything, labelled.
        model_people: identity indices whose samples train the model.
        attack_train_mask: bool (N,), True for the attack people's samples that train the attacker;
            their remaining samples test it. Ignored for model people.
        crop: the ``CropReport`` of a set cut by the face detector, or None.
    """
    is_model = np.isin(samples.identity, model_people)
    return Protocol(
        name=name, task=task,
        train=samples.subset(is_model),
        test=samples.subset(~is_model),
        attack_train=samples.subset(~is_model & attack_train_mask),
        attack_test=samples.subset(~is_model & ~attack_train_mask),
        crop=None if crop is None else crop.as_dict(),
    )
