"""Pure logic of the gateway: utterance assembly bounds, per-device queues, duplicate-id memory."""
from __future__ import annotations

from gateway.audio import (REASON_MISMATCH, REASON_TIMEOUT, REASON_TOO_LONG, REASON_TOO_MANY,
                           UtteranceAssembler)
from gateway.intake import DeviceQueues, Inbound
from gateway.results import RecentIds
from schemas.media import AudioChunk


def _chunk(seq: int, utt: str = "u1", device: str = "mic1", frames: int = 800, rate: int = 8000,
           final: bool = False) -> AudioChunk:
    return AudioChunk(device=device, seq=seq, ts=100.0 + seq, utt=utt, rate=rate, width=2, channels=1,
                      codec="pcm_s16le", final=final, data=bytes([seq % 256, 0]) * frames)


def _item(seq: int, device: str = "mic1") -> Inbound:
    return Inbound("audio", device, f"privedge/{device}/audio", b"", seq, 1, 1)


def test_chunks_join_in_seq_order_and_redeliveries_collapse():
    a = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5)
    assert a.add(_chunk(3), _item(3)) == (None, [])
    assert a.add(_chunk(2), _item(2)) == (None, [])      # late first chunk
    assert a.add(_chunk(3), _item(33)) == (None, [])     # redelivered copy
    done, rejected = a.add(_chunk(4, final=True), _item(4))
    assert rejected == [] and len(a) == 0
    joined = done.joined()
    assert (joined.seq, joined.ts, joined.final) == (2, 102.0, True)
    assert joined.data == bytes([2, 0]) * 800 + bytes([3, 0]) * 800 + bytes([4, 0]) * 800
    assert [i.mid for i in done.items] == [3, 2, 33, 4]  # every MQTT message gets acknowledged
    wave, rate = done.wave()
    assert rate == 8000 and wave.shape == (2400,)


def test_too_long_utterance_is_rejected_and_its_later_chunks_too():
    a = UtteranceAssembler(max_seconds=0.15, max_open=4, timeout_s=5)
    assert a.add(_chunk(0), _item(0)) == (None, [])
    _, rejected = a.add(_chunk(1), _item(1))               # 1600 frames > 0.15 s * 8000
    assert [(r.reason, r.seq, len(r.items)) for r in rejected] == [(REASON_TOO_LONG, 0, 2)]
    _, rejected = a.add(_chunk(2, final=True), _item(2))
    assert [(r.reason, r.seq) for r in rejected] == [(REASON_TOO_LONG, 2)]


def test_open_utterances_are_bounded_and_time_out():
    a = UtteranceAssembler(max_seconds=10, max_open=2, timeout_s=5)
    a.add(_chunk(0, utt="a"), _item(0))
    a.add(_chunk(1, utt="b"), _item(1))
    _, rejected = a.add(_chunk(2, utt="c"), _item(2))
    assert [(r.reason, r.seq) for r in rejected] == [(REASON_TOO_MANY, 0)]
    import time
    expired = a.expire(time.monotonic() + 6)
    assert sorted((r.reason, r.seq) for r in expired) == [(REASON_TIMEOUT, 1), (REASON_TIMEOUT, 2)]
    assert len(a) == 0


def test_format_change_inside_an_utterance_is_rejected():
    a = UtteranceAssembler(max_seconds=10, max_open=2, timeout_s=5)
    a.add(_chunk(0), _item(0))
    _, rejected = a.add(_chunk(1, rate=16000), _item(1))
    assert [(r.reason, len(r.items)) for r in rejected] == [(REASON_MISMATCH, 2)]


def _inb(device: str, seq: int) -> Inbound:
    return Inbound("image", device, f"privedge/{device}/image", b"", seq, 1, 1)


def test_queues_drop_oldest_per_device_and_take_round_robin():
    dropped = []
    q = DeviceQueues(capacity=2, hold_capacity=4, on_drop=dropped.append)
    for seq in range(4):
        q.put(_inb("a", seq))
    q.put(_inb("b", 10))
    assert [(d.device, d.mid) for d in dropped] == [("a", 0), ("a", 1)]
    assert [(i.device, i.mid) for i in q.take(10, 0, 0.1)] == [("a", 2), ("b", 10), ("a", 3)]
    assert q.take(10, 0, 0.05) == []


def test_holding_queues_keep_up_to_the_hold_bound_and_refuse_after_close():
    dropped = []
    q = DeviceQueues(capacity=2, hold_capacity=4, on_drop=dropped.append)
    q.hold = True
    for seq in range(5):
        q.put(_inb("a", seq))
    assert [d.mid for d in dropped] == [0] and q.depth() == 4
    q.close()
    assert q.put(_inb("a", 9)) is False
    assert [i.mid for i in q.take(3, 0, 0.1)] == [1, 2, 3]
    assert [i.mid for i in q.take(3, 0, 0.1)] == [4]
    assert q.take(3, 0, 0.1) == []


def test_recent_ids_forget_the_oldest():
    ids = RecentIds(2)
    for k in ("x", "y", "z"):
        ids.add(k)
    assert "x" not in ids and "y" in ids and "z" in ids and len(ids) == 2


def test_backpressure_overflow_holds_instead_of_dropping():
    from gateway.config import GatewaySettings
    from gateway.intake import Intake
    from gateway.metrics import Metrics
    from schemas import Names

    def queue(overflow: str) -> DeviceQueues:
        s = GatewaySettings(overflow=overflow, queue_per_device=2, receive_maximum=50)
        intake = Intake(s, Names(), Metrics(), ("image",), lambda *a: None)
        intake.set_hold(False)  # what the gateway calls when Redis is back
        return intake.queues["image"]

    assert queue("backpressure").hold is True and queue("backpressure").hold_capacity == 50
    assert queue("drop_oldest").hold is False


def test_the_example_config_file_is_valid():
    from pathlib import Path

    from gateway.config import load_settings

    example = Path(__file__).resolve().parents[1] / "gateway" / "example.yaml"
    s = load_settings({}, config_file=example, env={})
    assert s.bundles == ("bundles/glasses", "bundles/digit") and s.mqtt_protocol == "5" and s.wait_ms == 5.0
