"""MediaMessage (cloud_only uploads) round-trips and rejects bad input like every other message."""
import msgpack
import numpy as np
import pytest

from schemas import MissingField, TooLarge, UnknownVersion, WrongType
from schemas.limits import Limits
from schemas.media import AudioChunk, ImageFrame
from schemas.upload import MediaMessage


def _image_msg() -> MediaMessage:
    frame = ImageFrame.from_array(np.arange(64, dtype=np.uint8).reshape(8, 8), device="cam1", seq=3, ts=1.5)
    return MediaMessage.wrap(frame, gateway="home", ts_sent=2.0, task="glasses", model="glasses-abc",
                             reply="privedge:results:home")


def test_image_round_trip_keeps_the_original_frame():
    msg = _image_msg()
    back = MediaMessage.decode(msg.encode())
    assert back == msg
    assert back.id == "home/cam1/3" and back.kind == "image"
    assert np.array_equal(back.media().pixels(), np.arange(64, dtype=np.uint8).reshape(8, 8))


def test_a_joined_utterance_may_exceed_one_chunks_bound():
    limits = Limits(max_audio_payload=1024)
    chunk = AudioChunk(device="mic1", seq=7, ts=1.0, utt="u1", rate=8000, width=2, channels=1,
                       codec="pcm_s16le", final=True, data=b"\x01\x00" * 4000)
    msg = MediaMessage.wrap(chunk, gateway="home", ts_sent=2.0, task="digit", model="digit-abc",
                            reply="r", limits=limits)
    back = MediaMessage.decode(msg.encode(limits), limits)
    assert back.media(limits) == chunk and back.seq == 7


@pytest.mark.parametrize("change, error", [
    (lambda m: m.update(v=2), UnknownVersion),
    (lambda m: m.pop("payload"), MissingField),
    (lambda m: m.update(kind="video"), WrongType),
    (lambda m: m.update(seq="3"), WrongType),
])
def test_bad_fields_are_refused(change, error):
    wire = _image_msg().to_wire()
    change(wire)
    with pytest.raises(error):
        MediaMessage.decode(msgpack.packb(wire, use_bin_type=True))


def test_oversize_payload_refused_before_decoding():
    with pytest.raises(TooLarge):
        MediaMessage.decode(b"\x00" * (Limits().max_image_payload + 1))
