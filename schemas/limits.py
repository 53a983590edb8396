"""Size limits that every decoder enforces before (and while) decoding.

The defaults fit the home deployment: camera frames of a few hundred kilobytes, audio chunks of a
fraction of a second, feature vectors of a few dozen bytes. A gateway or worker may pass its own
:class:`Limits` to ``decode``; a limit is never looser than the payload bound it sits under.
"""
from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Limits:
    """Upper bounds, checked on the raw payload first and then per field."""

    max_image_payload: int = 4 * MIB
    """Bytes of one encoded ImageFrame message (jpeg/png/raw data plus header)."""
    max_image_pixels: int = 4096 * 4096
    """Pixels (w*h) of a frame; checked on the header before Pillow decodes anything."""
    max_audio_payload: int = 512 * KIB
    """Bytes of one encoded AudioChunk message (about 2.7 s of 48 kHz stereo pcm_s16le)."""
    max_feature_payload: int = 64 * KIB
    """Bytes of one encoded FeatureMessage; also the privacy bound on any cloud entry."""
    max_tensor_elements: int = 16 * KIB
    """Elements of one feature tensor (product of its shape)."""
    max_tensor_dims: int = 8
    """Dimensions of one feature tensor's shape."""
    max_result_payload: int = 64 * KIB
    """Bytes of one encoded Result or ErrorReport."""
    max_str: int = 256
    """Characters of any string field (ids, names, labels) unless its field says otherwise."""
    max_map: int = 64
    """Entries of any map, the top-level message included (extra fields count)."""
    max_array: int = 256
    """Items of any array (shapes, top-k scores)."""
    max_depth: int = 4
    """Containers nested in one message (the top-level map is 1; a shape or a scores map inside it, 2),
    checked on the bytes before msgpack unpacks anything (schemas.structure)."""
    max_objects: int = 2048
    """msgpack objects in one message (every scalar, string, container, map key and value counts one):
    with ``max_depth``, bounds what unpacking allocates whatever the per-container limits allow."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limit {name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = Limits()
