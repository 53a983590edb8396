"""The firmware writer's guide (docs/firmware.md): current with the schemas, and its example works as printed."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from privedge import firmware_guide
from schemas import AudioChunk, ImageFrame, Names
from tests.gateway_fixtures import Listener, full_bundles, gateway_bundles, make_gateway  # noqa: F401 (fixtures)
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker

pytestmark = pytest.mark.integration


def test_the_guide_in_the_repository_is_what_the_schemas_render():
    assert firmware_guide.main(["--check"]) == 0, "run: python -m privedge.firmware_guide"
    text = firmware_guide.GUIDE.read_text()
    for cls in (ImageFrame, AudioChunk):  # every declared field is in the guide's table
        for f in cls.wire_fields():
            assert f"| `{f.name}` |" in text


def _example(text: str, lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, f"one {lang} example expected"
    return blocks[0]


def test_a_frame_and_a_chunk_built_as_the_guide_says_get_results(tmp_path, mosquitto, redis_server, make_gateway,
                                                                 full_bundles):  # noqa: F811
    text = firmware_guide.GUIDE.read_text()
    # the Python example, run as printed, with nothing of privedge's on its path
    # (-S: no site-packages; only a copy of msgpack on the path)
    subprocess.run([sys.executable, "-S", "-c", _example(text, "python")], cwd=tmp_path, check=True,
                   env={"PYTHONPATH": _msgpack_only(tmp_path)})
    frame, chunk = (tmp_path / "frame.bin").read_bytes(), (tmp_path / "chunk.bin").read_bytes()
    assert ImageFrame.decode(frame).device == AudioChunk.decode(chunk).device == firmware_guide.DEVICE

    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), name="wf", block_ms=50,
                                   bundles=(full_bundles["image"], full_bundles["speech"]))).start()
    lis = Listener(mosquitto.port)
    try:
        make_gateway()
        names = Names()
        lines = [ln for ln in _example(text, "sh").splitlines() if ln.startswith("mosquitto_pub")]
        assert len(lines) == 2
        for line in lines:  # the shell lines as printed, with the test broker's address
            argv = line.replace("BROKER", "127.0.0.1").replace("1883", str(mosquitto.port)).split()
            subprocess.run(argv, cwd=tmp_path, check=True, timeout=30)
        topic = names.result(firmware_guide.DEVICE)
        assert lis.wait_for(lambda lst: len(lst.messages[topic]) >= 2, timeout=60), dict(lis.messages)
        results = lis.json(topic)
        assert sorted(r["seq"] for r in results) == [1, 2]
        assert {r["task"] for r in results} == {"glasses", "digit"} and all(0 <= r["score"] <= 1 for r in results)
    finally:
        lis.close()
        worker.stop()


def _msgpack_only(tmp_path) -> str:
    """A path holding only msgpack (copied from this environment), as a firmware writer's machine would."""
    import msgpack

    site = tmp_path / "site"
    shutil.copytree(msgpack.__path__[0], site / "msgpack")
    return str(site)
