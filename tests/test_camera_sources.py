"""Video and stream camera sources: a video written here, read as a file and over HTTP, sampled at --rate."""
from __future__ import annotations

import functools
import http.server
import itertools
import threading

import cv2
import numpy as np
import pytest

from schemas import ImageFrame, Names
from sensors import cli
from sensors.sources import SourceError, is_live, is_video, open_camera, video_frames
from tests.test_sensors import Collector

FPS, N_FRAMES, STEP = 10, 20, 12


@pytest.fixture
def video(tmp_path):
    """A 2 s MJPG video at 10 fps whose frame i is uniformly grey level 12 * i (64x48)."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(np.full((48, 64, 3), STEP * i, np.uint8))
    writer.release()
    return path


@pytest.fixture
def http_video(video):
    """The video served by a local HTTP server: ``http://127.0.0.1:PORT/clip.avi``."""
    handler = functools.partial(QuietHandler, directory=str(video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{video.name}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def frame_numbers(frames) -> list[int]:
    """Which frame of the test video each frame is, from its grey level (MJPG is lossy, a few levels)."""
    return [int(round(float(f.mean()) / STEP)) for f in frames]


def test_video_file_every_frame_and_sampled_at_rate(video):
    every = list(video_frames(video))
    assert frame_numbers(every) == list(range(N_FRAMES))
    assert every[0].shape == (48, 64, 3) and every[0].dtype == np.uint8
    # 2 frames per second of a 10 fps video: frames 0, 5, 10, 15
    assert frame_numbers(video_frames(video, rate=2)) == [0, 5, 10, 15]
    assert frame_numbers(video_frames(video, rate=4)) == [0, 3, 5, 8, 10, 13, 15, 18]  # 2.5 frames apart
    looped = list(itertools.islice(video_frames(video, rate=1, loop=True), 5))
    assert frame_numbers(looped) == [0, 10, 0, 10, 0]


def test_http_stream_takes_the_same_path_and_stops_with_an_error(http_video):
    assert is_video(http_video) and is_live(http_video)
    assert frame_numbers(itertools.islice(open_camera(http_video, rate=2), 4)) == [0, 5, 10, 15]
    # a stream that ends has stopped delivering: an error, not a quiet end of input
    with pytest.raises(SourceError, match="stopped delivering"):
        list(open_camera(http_video, rate=0))


def test_bad_video_sources_fail_at_open(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        video_frames(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        video_frames(junk)
    with pytest.raises(SourceError, match="cannot open stream"):
        video_frames("http://127.0.0.1:9/nothing.avi")


@pytest.mark.integration
def test_camera_cli_publishes_sampled_video_frames(mosquitto, video):
    sub = Collector(mosquitto.url, [Names().image("door")])
    try:
        rc = cli.main(["camera", "--broker", mosquitto.url, "--device", "door", "--source", str(video),
                       "--rate", "5", "--codec", "png"])
        assert rc == cli.EXIT_OK
        frames = [ImageFrame.decode(m.payload) for m in sub.take(10)]
        assert sub.messages.empty()
    finally:
        sub.close()
    assert [f.seq for f in frames] == list(range(10))
    assert frame_numbers(f.pixels() for f in frames) == list(range(0, N_FRAMES, 2))
    assert all(f.device == "door" and (f.w, f.h, f.ch) == (64, 48, 3) for f in frames)


def test_scene_set_written_to_disk_feeds_the_folder_and_video_sources(tmp_path):
    from bench import scenes

    index = scenes.write_scenes(tmp_path / "set", n=4, seed=3, n_free=1, fps=2)
    made = scenes.composites(4, seed=3) + scenes.face_free(1, seed=3)
    assert sorted(index) == sorted(p.name for p in (tmp_path / "set").glob("*.png"))
    for (name, entry), scene in zip(sorted(index.items()), made):
        np.testing.assert_allclose(np.reshape(entry["boxes"], (-1, 4)), scene.boxes.reshape(-1, 4), atol=0.06)
    folder = list(open_camera(str(tmp_path / "set")))
    assert [f.shape for f in folder] == [s.image.shape for s in made]
    assert all((f == s.image).all() for f, s in zip(folder, made))  # PNG: exact
    small = [s.image for s in made if s.image.shape[:2] == (480, 640)]
    clip = list(video_frames(tmp_path / "set" / "scenes.avi"))
    assert len(clip) == len(small) >= 2
    assert all(np.abs(c.astype(int) - s.astype(int)).mean() < 8 for c, s in zip(clip, small))  # MJPG: close
