"""privedge wire formats: messages, their limits and errors, and every topic and key name.

No I/O here: the sensors, gateway and workers import these and do their own transport.
"""
from schemas.codec import WIRE_VERSION, Message
from schemas.errors import (BadName, BadTensor, Malformed, MissingField, SchemaError, TooLarge,
                            UndecodableMedia, UnknownVersion, WrongType)
from schemas.features import FeatureMessage, InferenceId, face_of, make_id, split_id
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.media import AudioChunk, ImageFrame, decode_image, encode_image
from schemas.names import GROUP, Names, parse_sensor_topic
from schemas.results import ErrorReport, Result

__all__ = [
    "WIRE_VERSION", "Message", "SchemaError", "Malformed", "UnknownVersion", "MissingField", "WrongType",
    "TooLarge", "BadTensor", "UndecodableMedia", "BadName", "FeatureMessage", "InferenceId", "make_id",
    "split_id", "face_of",
    "Limits", "DEFAULT_LIMITS", "AudioChunk", "ImageFrame", "decode_image", "encode_image", "GROUP",
    "Names", "parse_sensor_topic", "ErrorReport", "Result",
]
