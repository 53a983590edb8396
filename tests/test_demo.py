"""``privedge demo`` as a user runs it: real mosquitto, redis-server, gateway, workers and sensors, each a
process; the summary it writes, a clean stop on SIGINT, and the bundle cache that spares retraining."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from models import signing
from models.bundle import make_untrained_bundle
from privedge.children import Child
from privedge.demo_bundles import bundle_key, cached_bundle, ensure_bundles, resolved_settings, train_argv
from privedge.demo_view import Tally, percentile
from tests.conftest import FAST, REPO
from tests.gateway_fixtures import wait_until

pytestmark = pytest.mark.integration

DURATION = 8 if FAST else 12


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> list[str]:
    """An image and a speech bundle, made instantly (no accuracy needed to test the plumbing)."""
    root = tmp_path_factory.mktemp("demo-bundles")
    for modality in ("image", "speech"):
        make_untrained_bundle(root / modality, modality)
    return [a for m in ("image", "speech") for a in ("--bundle", str(root / m))]


@pytest.fixture(scope="module")
def trained_image(tmp_path_factory):
    """(cache folder, train argv, bundles): an image bundle the demo's way (``privedge train`` with its
    default embedding, one epoch per stage on the small synthetic set), into an empty cache."""
    root = tmp_path_factory.mktemp("demo-cache")
    argv = train_argv("image", epochs=1)
    return root / "cache", argv, ensure_bundles(root / "cache", {"image": argv}, threading.Event(),
                                                log_dir=root / "logs")


class DemoProcess:
    """``privedge demo`` in a child process; its output is collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "privedge.cli", "demo", "--plain", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching ``pattern``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.2))

    def started(self, timeout: float = 180.0) -> tuple[list[int], list[int]]:
        """(server ports, pids of every process the demo started) once its sensors run."""
        servers = self.wait_line(r"broker mqtt://127\.0\.0\.1:(\d+) \(pid (\d+)\), redis redis://127\.0\.0\.1:(\d+) "
                                 r"\(pid (\d+)\)", timeout)
        running = self.wait_line(r"^running: .*\(pids ([\d, ]+)\)", timeout)
        pids = [int(servers[2]), int(servers[4]), *(int(p) for p in running[1].split(", "))]
        return [int(servers[1]), int(servers[3])], pids

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:  # only on failure: end the demo and whatever it started
                for p in psutil.Process(self.proc.pid).children(recursive=True):
                    p.kill()
                self.proc.kill()
        self._reader.join(5)
        return rc

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_nothing_left(ports: list[int], pids: list[int]) -> None:
    assert [p for p in pids if alive(p)] == [], "processes the demo started are still running"
    assert [p for p in ports if port_open(p)] == [], "the broker or Redis still listens"


def test_demo_runs_for_its_duration_and_summarises_measured_figures(trained_image, untrained, tmp_path):
    # The image bundle is a trained one of the default embedding (its wire dtype, e.g. int8, end to end).
    bundles = ["--bundle", str(trained_image[2][0].path), *untrained[2:]]
    summary_file = tmp_path / "summary.json"
    demo = DemoProcess("--duration", str(DURATION), "--summary-json", str(summary_file), *bundles)
    ports, pids = demo.started()
    assert all(alive(p) for p in pids)
    made = demo.wait_line(r"^camera scenes: (\d+) frames of 640x480 with (\d+) procedural faces", 60)
    frames, faces = int(made[1]), int(made[2])
    assert frames == 12 and 2 * frames <= faces <= 3 * frames
    # Each face of a scene is a line of its own: frame, face index, its box in the frame, label and score.
    face_line = (r"^\d\d:\d\d:\d\d  camera-1 +glasses +frame (\d+) +face (\d)  box (\d+),(\d+) (\d+)x(\d+) +"
                 r"(no_glasses|glasses) +score [01]\.\d\d  latency +[\d.]+ ms")
    demo.wait_line(face_line, 60)
    assert demo.finish(DURATION + 120) == 0, demo.output
    assert_nothing_left(ports, pids)

    s = json.loads(summary_file.read_text())
    assert s["inputs"] > 0 and s["answered"] == s["inputs"], s
    assert s["rejected"] == 0 and s["dead_lettered"] == 0, s
    assert s["inputs_by_device"].get("camera-1", 0) > 0
    assert s["answered_by_device"] == s["inputs_by_device"]
    # The gateway found every face of the demo's scenes: two or three results per camera frame, none
    # without a face, each face once, with a box inside the 640x480 frame.
    camera_frames, camera_results = s["inputs_by_device"]["camera-1"], s["results_by_device"]["camera-1"]
    assert 2 * camera_frames <= camera_results <= 3 * camera_frames and s["frames_without_faces"] == 0, s
    lines = [m for line in demo.lines if (m := re.search(face_line, line))]
    assert len(lines) == s["faces"] == camera_results
    assert len({(m[1], m[2]) for m in lines}) == len(lines)
    for m in lines:
        x, y, w, h = map(int, m.group(3, 4, 5, 6))
        assert w >= 32 and h >= 32 and x + w <= 640 and y + h <= 480, m[0]
    by_frame = {}
    for m in lines:
        by_frame.setdefault(m[1], set()).add(int(m[2]))
    assert all(idx == set(range(len(idx))) for idx in by_frame.values()), by_frame
    # One feature message per face and per utterance went up, far smaller than the media that came in.
    assert s["messages_cloud"] == s["faces"] + s["inputs_by_device"].get("mic-1", 0)
    assert 0 < s["bytes_cloud"] * 5 < s["bytes_raw"], s
    assert 0 < s["latency_p50_ms"] <= s["latency_p99_ms"] <= s["latency_max_ms"]
    assert s["publish_s"] >= DURATION and s["interrupted"] is False
    # The gateway's own counters (its last stats message) agree with what the demo saw on the broker.
    assert s["gateway"]["received"] == s["messages_raw"] and s["gateway"]["dropped"] == {}
    assert f"inputs            {s['inputs']}" in demo.output  # the printed summary says the same


def test_sigint_mid_run_stops_everything_and_still_summarises(untrained, tmp_path):
    summary_file = tmp_path / "summary.json"
    demo = DemoProcess("--duration", "300", "--summary-json", str(summary_file), *untrained)
    ports, pids = demo.started()
    demo.wait_line(r"latency +[\d.]+ ms", 60)  # results are flowing
    assert all(alive(p) for p in pids)
    demo.proc.send_signal(signal.SIGINT)
    assert demo.finish(90) == 0, demo.output
    assert_nothing_left(ports, pids)
    s = json.loads(summary_file.read_text())
    assert s["interrupted"] is True and s["publish_s"] < 300
    assert s["inputs"] > 0 and s["answered"] == s["inputs"], s


def test_demo_on_a_local_redis_cluster(untrained, tmp_path):
    """``--redis-cluster 3``: three masters and their replicas, the gateway's inputs over three shards; every
    input comes back, every feature message is counted, and no node is left running."""
    summary_file = tmp_path / "summary.json"
    demo = DemoProcess("--duration", str(DURATION), "--redis-cluster", "3", "--summary-json", str(summary_file),
                       *untrained)
    line = demo.wait_line(r"Redis Cluster of 3 masters and 3 replicas redis\+cluster://(\S+)", 180)
    ports = [int(node.rsplit(":", 1)[1]) for node in line[1].split(",")]
    running = demo.wait_line(r"^running: .*\(pids ([\d, ]+)\)", 180)
    pids = [int(p) for p in running[1].split(", ")]
    assert len(ports) == 6 and all(port_open(p) for p in ports)
    assert demo.finish(DURATION + 120) == 0, demo.output
    assert_nothing_left(ports, pids)
    s = json.loads(summary_file.read_text())
    assert s["inputs"] > 0 and s["answered"] == s["inputs"], s  # every frame and utterance came back
    # one feature message and one result per face, one per utterance
    assert s["messages_cloud"] == s["results"] == s["faces"] + s["inputs_by_device"].get("mic-1", 0), s
    assert s["dead_lettered"] == 0, s


def test_missing_bundle_is_trained_once_then_found_in_the_cache(trained_image, tmp_path):
    cache, argv, first = trained_image
    assert [b.modality for b in first] == ["image"] and first[0].train_s is not None
    manifest = json.loads((first[0].path / "manifest.json").read_text())
    # The demo trains with privedge train's default embedding, whatever it is today.
    assert manifest["embedding"] == resolved_settings(argv)["embedding"]
    assert first[0].path.name == bundle_key(argv) and cached_bundle(cache, bundle_key(argv))
    assert [p.name for p in cache.iterdir()] == [bundle_key(argv)]  # no temporary left
    signing.verify_bundle(first[0].path, first[0].public_key)  # signed by the provider key it pins

    again = ensure_bundles(cache, {"image": argv}, threading.Event(), log_dir=tmp_path / "logs")
    assert again[0].path == first[0].path and again[0].train_s is None


def test_cache_key_follows_every_training_setting():
    base = bundle_key(train_argv("image"))
    assert base == bundle_key(train_argv("image"))
    assert base.startswith(f"image-{resolved_settings(train_argv('image'))['embedding']}-")
    others = {bundle_key(train_argv("speech")), bundle_key(train_argv("image", size="full")),
              bundle_key(train_argv("image", epochs=1)), bundle_key(train_argv("image", seed=1)),
              bundle_key([*train_argv("image"), "--embedding", "simple"])}
    assert base not in others and len(others) == 5


def test_interrupted_training_leaves_nothing_in_the_cache(tmp_path):
    from privedge.demo_bundles import TrainingInterrupted

    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    with pytest.raises(TrainingInterrupted):
        ensure_bundles(tmp_path / "cache", {"image": train_argv("image")}, stop, log_dir=tmp_path / "logs")
    assert list((tmp_path / "cache").iterdir()) == []


def test_tally_counts_each_result_once_and_percentiles_interpolate():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    t = Tally()
    t.add_raw("cam", 100, complete_input=True)
    t.add_raw("mic", 50, complete_input=False)
    t.add_raw("mic", 50, complete_input=True)
    r = {"id": "gw/cam/1", "device": "cam", "label": "x", "latency_ms": 12.5}
    assert t.add_result(r) and not t.add_result(r)
    assert not t.answered()
    t.add_result({**r, "id": "gw/mic/2", "device": "mic", "latency_ms": 20.0})
    s = t.summary()
    assert t.answered() and (s["inputs"], s["results"], s["bytes_raw"], s["messages_raw"]) == (2, 2, 200, 3)
    assert s["latency_p50_ms"] == pytest.approx(16.25)
    t.add_raw("cam", 100, complete_input=True)
    assert not t.answered()
    t.add_dead("analysis failed")  # a dead-lettered input is answered too: the demo stops waiting for it
    assert t.answered() and t.summary()["dead_reasons"] == {"analysis failed": 1}


def test_a_camera_frame_is_answered_once_every_face_of_it_has_its_result():
    from privedge.demo_view import result_line

    t = Tally()
    for _ in range(2):
        t.add_raw("cam", 100, complete_input=True)
    face = {"device": "cam", "boot": 7, "seq": 1, "label": "glasses", "score": 0.9, "latency_ms": 5.0,
            "task": "glasses", "ts": 0.0, "faces": {"found": 3, "answered": 2}}
    assert t.add_result({**face, "id": "gw/cam/7-1#0", "face": 0, "box": [10, 20, 30, 40]})
    assert not t.answered() and t.summary()["answered"] == 0  # the frame's second face is still out
    assert t.add_result({**face, "id": "gw/cam/7-1#1", "face": 1, "box": [50, 60, 70, 80]})
    assert t.summary()["answered"] == 1 and not t.answered()
    empty = {**face, "id": "gw/cam/7-2", "seq": 2, "label": "no_face", "score": 0.0, "faces": {"found": 1,
                                                                                                "answered": 0}}
    assert t.add_result(empty) and t.answered()
    s = t.summary()
    assert (s["results"], s["answered"], s["faces"], s["frames_without_faces"]) == (3, 2, 2, 1)
    assert " frame 1     face 1  box 50,60 70x80 " in result_line({**face, "id": "gw/cam/7-1#1", "face": 1,
                                                                    "box": [50, 60, 70, 80]})
    assert "frame 2     no face (1 found, none sent)" in result_line(empty)


def test_a_child_that_ignores_sigterm_leaves_its_stacks_in_its_log_then_is_killed(tmp_path):
    # As privedge/cli.py does for every command: SIGUSR1 prints the stacks. The child ignores SIGTERM, so
    # stop() must escalate, and the log must say where it was stuck.
    hang = ("import faulthandler, signal, time\n"
            "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "def stuck_here():\n"
            "    time.sleep(60)\n"
            "stuck_here()\n")
    child = Child("stubborn", [sys.executable, "-c", hang], tmp_path).start()
    wait_until(lambda: "ready" in child.tail(), 30)
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert "stuck_here" in child.tail()
