"""Pure logic of the gateway: utterance assembly bounds, per-device queues, duplicate-id memory, frame
staleness, removed settings."""
from __future__ import annotations

import time

import pytest

from gateway.audio import (REASON_MISMATCH, REASON_OVER_SHARE, REASON_TIMEOUT, REASON_TOO_LONG,
                           REASON_TOO_MANY, UtteranceAssembler)
from gateway.intake import DeviceQueues, Inbound
from gateway.results import RecentIds
from schemas.media import AudioChunk


def _chunk(seq: int, utt: str = "u1", device: str = "mic1", frames: int = 800, rate: int = 8000,
           final: bool = False) -> AudioChunk:
    return AudioChunk(device=device, seq=seq, ts=100.0 + seq, utt=utt, rate=rate, width=2, channels=1,
                      codec="pcm_s16le", final=final, data=bytes([seq % 256, 0]) * frames)


def _item(seq: int, device: str = "mic1", epoch: int = 1, size: int = 0) -> Inbound:
    return Inbound("audio", device, f"privedge/{device}/audio", b"\x00" * size, seq, 1, epoch)


def test_chunks_join_in_seq_order_and_duplicates_are_dropped_at_once():
    a = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5)
    assert a.add(_chunk(3), _item(3)) == (None, [], [])
    assert a.add(_chunk(2), _item(2)) == (None, [], [])      # late first chunk
    dup = _item(33)
    assert a.add(_chunk(3), dup) == (None, [], [dup])        # second copy: acknowledge now, keep nothing
    assert a.held() == 2
    again = _item(44, epoch=2)
    assert a.add(_chunk(3), again) == (None, [], [])          # the broker's copy after a reconnect
    done, rejected, _ = a.add(_chunk(4, final=True), _item(4, epoch=2))
    assert rejected == [] and len(a) == 0 and a.held() == 0
    joined = done.joined()
    assert (joined.seq, joined.ts, joined.final) == (2, 102.0, True)
    assert joined.data == bytes([2, 0]) * 800 + bytes([3, 0]) * 800 + bytes([4, 0]) * 800
    # one input per chunk, acknowledged with the utterance: chunk 3's is the copy that can still be acked
    assert [i.mid for i in done.inputs] == [2, 44, 4]
    wave, rate = done.wave()
    assert rate == 8000 and wave.shape == (2400,)


def test_chunks_of_a_completed_utterance_delivered_again_are_duplicates():
    """A broker stopped while the acknowledgements of an utterance came in resends only some of its
    chunks: they must not become a second utterance (with another seq, so another inference id)."""
    a = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5)
    a.add(_chunk(0), _item(0))
    a.add(_chunk(1), _item(1))
    done, _, _ = a.add(_chunk(2, final=True), _item(2))
    assert done is not None and done.seq == 0
    again1, again2 = _item(11, epoch=2), _item(12, epoch=2)
    assert a.add(_chunk(1), again1) == (None, [], [again1])
    assert a.add(_chunk(2, final=True), again2) == (None, [], [again2])
    assert len(a) == 0 and a.held() == 0


def test_a_new_seq_under_a_completed_utterance_id_is_a_new_utterance_not_a_duplicate():
    """Firmware that sends no boot id and reuses its utterance ids: only the seqs the completed utterance
    held are duplicates; a chunk with a new seq under the same id starts a new utterance."""
    a = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5)
    a.add(_chunk(0), _item(0))
    done, _, _ = a.add(_chunk(1, final=True), _item(1))
    assert done is not None
    fresh = _item(7)
    assert a.add(_chunk(7), fresh) == (None, [], [])       # held, not dropped as a duplicate
    again, _, _ = a.add(_chunk(8, final=True), _item(8))
    assert again is not None and again.seq == 7 and [i.mid for i in again.inputs] == [7, 8]


def test_labelled_counters_stay_bounded_whatever_the_device_names():
    from gateway.metrics import MAX_LABELS, OTHER_LABEL, Metrics

    m = Metrics()
    for i in range(MAX_LABELS + 500):
        m.inc_label("dropped", f"cam{i}")
    snap = m.snapshot()["dropped"]
    assert len(snap) == MAX_LABELS + 1 and snap[OTHER_LABEL] == 500 and m.count("dropped") == MAX_LABELS + 500


def test_duplicates_do_not_refresh_the_timeout_and_a_disconnection_does():
    a = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5)
    a.add(_chunk(0), _item(0))
    a.touch_all(time.monotonic() - 4)  # its last new chunk came 4 s ago
    for k in range(100):
        a.add(_chunk(0), _item(100 + k))
    assert [r.reason for r in a.expire(time.monotonic() + 1.5)] == [REASON_TIMEOUT]
    a.add(_chunk(10, utt="u2"), _item(10))
    a.touch_all(time.monotonic() + 4)   # disconnected meanwhile: the rest waits at the broker
    assert a.expire(time.monotonic() + 6) == []


def test_every_chunk_counts_against_the_caps_empty_ones_too():
    a = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5, max_chunks=5, max_bytes=10_000)
    for seq in range(5):
        assert a.add(_chunk(seq, frames=0), _item(seq, size=90)) == (None, [], [])
    _, rejected, _ = a.add(_chunk(5, frames=0), _item(5, size=90))
    assert [(r.reason, len(r.items)) for r in rejected] == [(REASON_TOO_LONG, 6)]
    assert "chunks" in rejected[0].detail and a.held() == 0
    b = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5, max_chunks=100, max_bytes=1000)
    b.add(_chunk(0, frames=0), _item(0, size=600))
    _, rejected, _ = b.add(_chunk(1, frames=0), _item(1, size=600))
    assert [r.reason for r in rejected] == [REASON_TOO_LONG] and "bytes" in rejected[0].detail


def test_a_device_flooding_empty_chunks_cannot_starve_another_device():
    """One microphone sends empty non-final chunks without end, under new utterance ids and old ones; the
    other keeps speaking. Every utterance of the quiet one completes, only the flooder's own are
    rejected, and what the assembler holds stays bounded by its share of the window."""
    hold, max_open = 100, 8
    a = UtteranceAssembler(max_seconds=10, max_open=max_open, timeout_s=5, max_chunks=50, hold_items=hold)
    completed, flood_rejected, peak = [], 0, 0
    seq = {"mic1": 0, "mic2": 0}

    def feed(device: str, utt: str, frames: int, final: bool = False):
        seq[device] += 1
        chunk = _chunk(seq[device], utt=utt, device=device, frames=frames, final=final)
        return a.add(chunk, _item(seq[device], device=device, size=60))

    for round_ in range(300):
        for k in range(40):  # the flood: 40 empty chunks per round, in 3 interleaved utterances
            done, rejected, _ = feed("mic2", f"flood-{round_ % 7}-{k % 3}", 0)
            assert done is None and all(r.device == "mic2" for r in rejected)
            flood_rejected += len(rejected)
        for part in range(3):
            done, rejected, _ = feed("mic1", f"talk-{round_}", 800, final=part == 2)
            assert not [r for r in rejected if r.device == "mic1"], rejected
            if done is not None:
                completed.append(done.utt)
        peak = max(peak, a.held())
    assert completed == [f"talk-{r}" for r in range(300)]
    assert flood_rejected > 0 and peak <= hold + 1 and len(a) <= max_open


def test_a_device_over_its_share_loses_its_own_oldest_utterance():
    a = UtteranceAssembler(max_seconds=10, max_open=4, timeout_s=5, hold_items=4)
    a.add(_chunk(0, utt="quiet", device="mic1"), _item(0, device="mic1"))
    rejected = []
    for k in range(1, 6):
        rejected += a.add(_chunk(k, utt=f"u{k % 2}", device="mic2"), _item(k, device="mic2"))[1]
    # 5 chunks held > 4: mic2, holding the most, loses its oldest utterance (u1, two chunks), whose next
    # chunk is then refused too; mic1's is untouched
    assert [(r.device, r.reason, r.seq, len(r.items)) for r in rejected] == [
        ("mic2", REASON_OVER_SHARE, 1, 2), ("mic2", REASON_OVER_SHARE, 5, 1)]
    assert a.held("mic1") == 1 and a.held() <= 4
    # full of open utterances: the device holding the most gives up its oldest, not the newcomer's peer
    b = UtteranceAssembler(max_seconds=10, max_open=3, timeout_s=5)
    b.add(_chunk(0, utt="q", device="mic1"), _item(0, device="mic1"))
    b.add(_chunk(1, utt="x", device="mic2"), _item(1, device="mic2"))
    b.add(_chunk(2, utt="y", device="mic2"), _item(2, device="mic2"))
    _, rejected, _ = b.add(_chunk(3, utt="r", device="mic1"), _item(3, device="mic1"))
    assert [(r.device, r.reason, r.seq) for r in rejected] == [("mic2", REASON_TOO_MANY, 1)]


def test_too_long_utterance_is_rejected_and_its_later_chunks_too():
    a = UtteranceAssembler(max_seconds=0.15, max_open=4, timeout_s=5)
    assert a.add(_chunk(0), _item(0)) == (None, [], [])
    _, rejected, _ = a.add(_chunk(1), _item(1))               # 1600 frames > 0.15 s * 8000
    assert [(r.reason, r.seq, len(r.items)) for r in rejected] == [(REASON_TOO_LONG, 0, 2)]
    _, rejected, _ = a.add(_chunk(2, final=True), _item(2))
    assert [(r.reason, r.seq) for r in rejected] == [(REASON_TOO_LONG, 2)]


def test_open_utterances_are_bounded_and_time_out():
    a = UtteranceAssembler(max_seconds=10, max_open=2, timeout_s=5)
    a.add(_chunk(0, utt="a"), _item(0))
    a.add(_chunk(1, utt="b"), _item(1))
    _, rejected, _ = a.add(_chunk(2, utt="c"), _item(2))
    assert [(r.reason, r.seq) for r in rejected] == [(REASON_TOO_MANY, 0)]
    expired = a.expire(time.monotonic() + 6)
    assert sorted((r.reason, r.seq) for r in expired) == [(REASON_TIMEOUT, 1), (REASON_TIMEOUT, 2)]
    assert len(a) == 0


def test_format_change_inside_an_utterance_is_rejected():
    a = UtteranceAssembler(max_seconds=10, max_open=2, timeout_s=5)
    a.add(_chunk(0), _item(0))
    _, rejected, _ = a.add(_chunk(1, rate=16000), _item(1))
    assert [(r.reason, len(r.items)) for r in rejected] == [(REASON_MISMATCH, 2)]


def _inb(device: str, seq: int) -> Inbound:
    return Inbound("image", device, f"privedge/{device}/image", b"", seq, 1, 1)


def test_queues_never_drop_take_round_robin_and_refuse_after_close():
    q = DeviceQueues()
    for seq in range(1000):
        q.put(_inb("a", seq))
    q.put(_inb("b", 10))
    assert q.depth() == 1001
    assert [(i.device, i.mid) for i in q.take(3, 0, 0.1)] == [("a", 0), ("b", 10), ("a", 1)]
    q.close()
    assert q.put(_inb("a", 9)) is False
    assert [i.mid for i in q.take(2000, 0, 0.1)] == list(range(2, 1000))
    assert q.take(3, 0, 0.1) == []


def test_recent_ids_forget_the_oldest():
    ids = RecentIds(2)
    for k in ("x", "y", "z"):
        ids.add(k)
    assert "x" not in ids and "y" in ids and "z" in ids and len(ids) == 2


@pytest.mark.parametrize("key", ["overflow", "queue_per_device"])
def test_a_removed_setting_is_refused_saying_what_replaces_it(key, tmp_path):
    from gateway.config import ConfigError, load_settings

    conf = tmp_path / "gw.yaml"
    conf.write_text(f"{key}: 64\n")
    with pytest.raises(ConfigError, match=f"{key}' was removed: .*receive_maximum"):
        load_settings({}, config_file=conf, env={})
    with pytest.raises(ConfigError, match="was removed"):
        load_settings({}, env={f"PRIVEDGE_{key.upper()}": "64"})


def test_a_skewed_camera_clock_is_not_stale_and_a_frame_that_waited_is():
    from gateway.staleness import DeviceClocks

    clocks, now = DeviceClocks(window_s=300), 1_000_000.0
    # camera A runs an hour behind, camera B 10 s ahead; both deliver promptly
    for k in range(10):
        t = now + k
        assert abs(clocks.age("a", t - 3600 - 0.01, t, t)) < 0.05
        assert abs(clocks.age("b", t + 10 - 0.01, t, t)) < 0.05
    # camera A's frame captured 40 s ago, taken now (it waited in the broker): 40 s old
    t = now + 100
    assert abs(clocks.age("a", t - 40 - 3600, t, t) - 40) < 0.05
    # the clock is set forward by 50 s: newer offsets win at once, nothing looks stale
    assert abs(clocks.age("a", t + 1 - 3600 + 50, t + 1, t + 1) - 0.0) < 0.05
    assert abs(clocks.age("a", t + 2 - 3550, t + 2, t + 2)) < 0.05


def test_the_example_config_file_is_valid():
    from pathlib import Path

    from gateway.config import load_settings

    example = Path(__file__).resolve().parents[1] / "gateway" / "example.yaml"
    s = load_settings({}, config_file=example, env={})
    assert s.bundles == ("bundles/glasses", "bundles/digit") and s.mqtt_protocol == "5" and s.wait_ms == 1.0


def test_a_duplicate_chunk_is_acknowledged_only_after_its_utterance_is_handed_on():
    """After a reconnect one micro-batch can hold an utterance's chunks from the old connection (which
    complete it) and the broker's copies of them (duplicates, acknowledgeable now). The copies must wait
    for the utterance to be handed on: acknowledged first, a crash in between would lose the utterance."""
    import numpy as np

    from gateway.config import GatewaySettings
    from gateway.extraction import ExtractionLoop
    from gateway.hand_on import FeaturesUpstream
    from gateway.metrics import Metrics
    from schemas import Names

    events: list[tuple[str, list[int]]] = []

    class Intake:  # what the loop asks of the MQTT side: queues, acknowledgements, connection state
        queues = {"audio": DeviceQueues()}
        epoch = 2

        class connected:  # noqa: N801
            @staticmethod
            def is_set() -> bool:
                return True

        def ack(self, items):
            events.append(("ack", [i.mid for i in items]))

    class Upstream:
        def send(self, entries, give_up):
            events.append(("send", [len(entries)]))
            return True

    class Model:
        def preprocess(self, raw):
            return np.zeros((1, 4, 4), np.float32)

        def extract_batch(self, xs):
            return np.zeros((len(xs), 8), np.float32)

    manifest = {"task": "digit", "model": "digit-000000000000", "labels": ["a", "b"]}
    loop = ExtractionLoop("audio", manifest, GatewaySettings(), Names(), Intake(), Metrics(), lambda *a: None,
                          FeaturesUpstream(Model(), Upstream(), Names().features("digit", "home")))
    chunks = [_chunk(0), _chunk(1, final=True)]
    old = [Inbound("audio", "mic1", "privedge/mic1/audio", c.encode(), 10 + c.seq, 1, 1) for c in chunks]
    new = [Inbound("audio", "mic1", "privedge/mic1/audio", c.encode(), 20 + c.seq, 1, 2) for c in chunks]
    loop.process(old + new)
    assert events[0] == ("send", [1]) and ("ack", [20, 21]) in events[1:], events
