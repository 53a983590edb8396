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
                             reply="privedge:results:{home}")


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


def test_golden_media_encoding_is_byte_exact_and_starts_with_the_shared_envelope():
    """The envelope fields, declared once (schemas.envelope), come first and in the same order as in a
    FeatureMessage; the bytes are those of the messages before the envelope was shared."""
    from schemas.envelope import Envelope
    from schemas.features import FeatureMessage

    chunk = AudioChunk(device="d", seq=2, boot=5, ts=1.0, utt="u", rate=8000, width=2, channels=1,
                       codec="pcm_s16le", final=True, data=b"\x01\x00\x02\x00")
    chunk_golden = (b"\x8c\xa1v\x01\xa6device\xa1d\xa3seq\x02\xa4boot\x05\xa2ts\xcb?\xf0\x00\x00\x00\x00\x00\x00"
                    b"\xa3utt\xa1u\xa4rate\xcd\x1f@\xa5width\x02\xa8channels\x01\xa5codec\xa9pcm_s16le"
                    b"\xa5final\xc3\xa4data\xc4\x04\x01\x00\x02\x00")
    msg = MediaMessage.wrap(chunk, gateway="g", ts_sent=3.0, task="t", model="m", reply="r")
    golden = (b"\x8d\xa1v\x01\xa2id\xa7g/d/5-2\xa7gateway\xa1g\xa6device\xa1d\xa3seq\x02\xa4boot\x05"
              b"\xa2ts\xcb?\xf0\x00\x00\x00\x00\x00\x00\xa7ts_sent\xcb@\x08\x00\x00\x00\x00\x00\x00"
              b"\xa4task\xa1t\xa5model\xa1m\xa5reply\xa1r\xa4kind\xa5audio\xa7payload\xc4e" + chunk_golden)
    assert chunk.encode() == chunk_golden and msg.encode() == golden
    assert MediaMessage.decode(golden) == msg and msg.media() == chunk
    envelope = [f.name for f in Envelope.wire_fields()]
    assert len(envelope) == 9
    for cls in (FeatureMessage, MediaMessage):
        assert [f.name for f in cls.wire_fields()][:9] == envelope
