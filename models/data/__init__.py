"""privedge datasets: real (FSDD, ORL, LFW, LibriSpeech, Speech Commands), user (CSV / labelled folder) and
built-in synthetic ones.

Everything is reached through :func:`load_protocol`, which returns a fixed evaluation protocol
(DESIGN.md, "Evaluation protocols") as four :class:`Samples` splits.
"""
from __future__ import annotations

from pathlib import Path

from models.data.samples import MODALITIES, Protocol, Samples

__all__ = ["Protocol", "Samples", "load_protocol", "SIZES"]

SIZES = ("full", "small")


def load_protocol(modality: str, data: str, *, seed: int = 0, size: str = "full",
                  detector: str | None = None) -> Protocol:
    """Load a dataset as an evaluation protocol.

    Args:
        modality: "image" | "speech".
        data: "synthetic", or a path to the FSDD, LibriSpeech or Speech Commands folder (speech), the ORL
            or LFW folder (image), a
            ``path,primary,identity`` CSV file or a ``<primary>/<identity>/<file>`` folder.
        seed: decides the people split of synthetic / user / LibriSpeech / Speech Commands datasets and
            the synthetic content (FSDD and ORL splits are fixed and ignore it).
        size: "full" | "small" (a quick subset for smoke tests and CI).
        detector: images only: take every image as a whole camera frame and cut its largest face with
            this :func:`models.faces.make_detector` kind and :func:`models.faces.crop_face`, as the
            gateway does (``models.data.face_crops``); None: the data set's own framing.

    Returns:
        Protocol "fsdd" | "orl-unseen" | "lfw-unseen" | "librispeech" | "speech-commands" |
        "synthetic-faces" | "synthetic-speech" | "csv" | "folder", with "-detected" appended on detector
        crops (``Protocol.crop`` then says how many frames had no face and were left out).

    Raises:
        FileNotFoundError: the path does not exist (or lacks the files it names).
        ValueError: unknown modality / size, a dataset of the other modality, or a detector for
            speech or synthetic data.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if detector is not None and (modality != "image" or data == "synthetic"):
        raise ValueError("face detector crops need a set of real image frames (ORL, LFW, a CSV or folder)")
    if data == "synthetic":
        if modality == "image":
            from models.data.synth_faces import synthetic_faces_protocol
            return synthetic_faces_protocol(seed=seed, size=size)
        from models.data.synth_speech import synthetic_speech_protocol
        return synthetic_speech_protocol(seed=seed, size=size)

    from models.data import fsdd, generic, lfw, librispeech, orl, speech_commands

    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path} (give a folder, a CSV file or 'synthetic')")
    if path.is_dir() and fsdd.is_fsdd(path):
        if modality != "speech":
            raise ValueError(f"{path} is the FSDD speech dataset, but modality {modality!r} was asked for")
        return fsdd.fsdd_protocol(path, size=size)
    if path.is_dir() and orl.is_orl(path):
        if modality != "image":
            raise ValueError(f"{path} is the ORL face dataset, but modality {modality!r} was asked for")
        return orl.orl_protocol(path, detector)
    if path.is_dir() and lfw.is_lfw(path):
        if modality != "image":
            raise ValueError(f"{path} is the LFW face dataset, but modality {modality!r} was asked for")
        return lfw.lfw_protocol(path, seed=seed, size=size, detector=detector)
    for is_set, make in ((librispeech.is_librispeech, librispeech.librispeech_protocol),
                         (speech_commands.is_speech_commands, speech_commands.speech_commands_protocol)):
        if path.is_dir() and is_set(path):
            if modality != "speech":
                raise ValueError(f"{path} is a speech dataset, but modality {modality!r} was asked for")
            return make(path, seed=seed, size=size)
    return generic.generic_protocol(path, modality, seed=seed, size=size, detector=detector)
