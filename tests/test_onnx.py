"""ONNX bundles: both runtimes agree (features and labels, image and speech), batch equals item by item,
a tampered or foreign .onnx is refused, the model id ignores the ONNX copies, and a gateway and a worker
serve on ONNX Runtime against real mosquitto and redis-server."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from gateway import extraction
from gateway.config import RUNTIMES as GATEWAY_RUNTIMES
from models import onnx_runtime
from models.bundle import (HashMismatchError, MissingFileError, load_analyzer, load_extractor, load_full,
                           make_manifest, make_untrained_bundle, read_manifest, save_bundle, sha256_file,
                           write_manifest)
from models.onnx_runtime import ONNX_FILES, OnnxMismatchError
from privedge.cli import bundle_main
from schemas.media import decode_image
from tests.gateway_fixtures import (Listener, full_bundles, gateway_bundles, image_frame,  # noqa: F401
                                    make_gateway, utterance)
from workers.config import RUNTIMES as WORKER_RUNTIMES, RedisSettings, WorkerSettings
from workers.service import Worker

FEATURE_TOL = 1e-4   # relative to the largest feature magnitude
PROB_TOL = 1e-5      # absolute, on probabilities


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-bundles")
    for modality in ("image", "speech"):
        make_untrained_bundle(root / modality, modality, seed=7)
    return {m: root / m for m in ("image", "speech")}


def _inputs(shape, n, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


def test_the_settings_offer_the_runtimes_the_loader_knows():
    assert GATEWAY_RUNTIMES is WORKER_RUNTIMES is onnx_runtime.RUNTIMES  # one definition (models.runtimes)


@pytest.mark.parametrize("modality", ["image", "speech"])
def test_both_runtimes_give_the_same_features_and_labels(bundles, modality):
    d = bundles[modality]
    ext_t, ext_o = load_extractor(d), load_extractor(d, runtime="onnx", threads=1)
    ana_t, ana_o = load_analyzer(d), load_analyzer(d, runtime="onnx", threads=1)
    assert (ext_t.runtime, ext_o.runtime, ana_t.runtime, ana_o.runtime) == ("torch", "onnx", "torch", "onnx")
    xs = _inputs(ext_t.input_shape, 12)
    z_t, z_o = ext_t.extract_batch(xs), ext_o.extract_batch(xs)
    assert z_o.shape == z_t.shape == (12, *ext_t.feature_shape) and z_o.dtype == z_t.dtype
    assert np.abs(z_o - z_t).max() <= FEATURE_TOL * max(1.0, np.abs(z_t).max())
    p_t, p_o = ana_t.analyze_batch(z_t), ana_o.analyze_batch(z_o)
    np.testing.assert_allclose(p_o, p_t, atol=PROB_TOL)
    clear = np.sort(p_t, axis=1)[:, -1] - np.sort(p_t, axis=1)[:, -2] > 10 * PROB_TOL  # no near-ties
    assert clear.sum() >= 6 and (p_o.argmax(1)[clear] == p_t.argmax(1)[clear]).all()
    # the whole network on ONNX (local-only / cloud-only serving) is the two halves
    np.testing.assert_allclose(load_full(d, runtime="onnx").predict_batch(xs), p_t, atol=PROB_TOL)


@pytest.mark.parametrize("modality", ["image", "speech"])
def test_onnx_batch_equals_item_by_item(bundles, modality):
    ext = load_extractor(bundles[modality], runtime="onnx")
    xs = _inputs(ext.input_shape, 9, seed=1)
    one_by_one = np.concatenate([ext.extract_batch([x]) for x in xs])
    np.testing.assert_allclose(ext.extract_batch(xs), one_by_one, rtol=1e-5, atol=1e-5)
    ana = load_analyzer(bundles[modality], runtime="onnx")
    z = ext.extract_batch(xs)
    np.testing.assert_allclose(ana.analyze_batch(z), np.concatenate([ana.analyze_batch(z[i:i + 1])
                                                                     for i in range(len(z))]), atol=1e-6)


def test_a_tampered_onnx_file_is_refused_even_on_auto(bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles["image"], d)
    data = bytearray((d / "extractor.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    (d / "extractor.onnx").write_bytes(bytes(data))
    for runtime in ("onnx", "auto"):
        with pytest.raises(HashMismatchError, match="sha256"):
            load_extractor(d, runtime=runtime)
    assert load_extractor(d, runtime="torch").runtime == "torch"  # the reference weights are untouched
    assert load_analyzer(d, runtime="onnx").runtime == "onnx"      # and so is the other half


def test_a_foreign_onnx_file_with_a_rewritten_hash_is_refused(bundles, tmp_path):
    """Rewriting the manifest's onnx hash does not change the model id, so the file must also agree with
    the torch weights the id names."""
    d, other = tmp_path / "b", tmp_path / "other"
    shutil.copytree(bundles["image"], d)
    make_untrained_bundle(other, "image", seed=8)
    shutil.copy(other / "extractor.onnx", d / "extractor.onnx")
    m = read_manifest(d)
    m["onnx"]["files"]["extractor.onnx"] = sha256_file(d / "extractor.onnx")
    write_manifest(d, m)
    with pytest.raises(OnnxMismatchError, match="differ from the torch weights"):
        load_extractor(d, runtime="auto")


def test_model_id_ignores_onnx_and_export_adds_it_to_an_old_bundle(bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles["speech"], d)
    m = read_manifest(d)
    mid = m["model"]
    # an old bundle: no ONNX files, no onnx entry
    del m["onnx"]
    for name in ONNX_FILES.values():
        (d / name).unlink()
    write_manifest(d, m)
    assert load_extractor(d, runtime="auto").runtime == "torch"
    with pytest.raises(MissingFileError, match="privedge bundle export"):
        load_extractor(d, runtime="onnx")
    assert bundle_main(["export", str(d)]) == 0
    m2 = read_manifest(d)
    assert m2["model"] == mid and set(m2["onnx"]["files"]) == set(ONNX_FILES.values())
    ext = load_extractor(d, runtime="auto")
    assert ext.runtime == "onnx" and ext.model_id == mid


def test_noise_is_drawn_after_the_onnx_graph_with_the_bundles_spread(tmp_path):
    """A bundle with PCA noise: the graph is exported noise-free, the noise is added per call with
    standard deviation noise_std * std on each dimension."""
    import torch

    from models.nets import build_net, image_config
    from models.pca import PCAFit
    from models.split import assemble

    cfg, cut, k, noise = image_config(2), "block2", 4, 0.5
    torch.manual_seed(0)
    c, h, w = cfg.shape_after(cut)
    std = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    pca = PCAFit(mean=np.zeros(c * h * w, np.float32), components=np.eye(c * h * w, k, dtype=np.float32),
                 std=std, explained=0.0)
    ext, ana = assemble(build_net(cfg), cfg, cut, pca, noise)
    manifest = make_manifest(task="glasses", modality="image", labels=["a", "b"], net_cfg=cfg, cut=cut,
                             embedding="untrained", pca=pca, noise_std=noise)
    save_bundle(tmp_path, extractor=ext, analyzer=ana, manifest=manifest)
    onnx = load_extractor(tmp_path, runtime="onnx")
    x = _inputs(onnx.input_shape, 1)[0]
    clean = onnx.forward.session.run(None, {"x": x[None]})[0][0]
    draws = onnx.extract_batch([x] * 2000)
    assert not np.allclose(draws[0], draws[1])
    np.testing.assert_allclose(draws.mean(0), clean, atol=0.15 * noise * std.max())
    np.testing.assert_allclose(draws.std(0), noise * std, rtol=0.1)


@pytest.mark.integration
def test_gateway_and_worker_serve_on_onnx_runtime(make_gateway, mosquitto, redis_server, full_bundles,
                                                  monkeypatch):
    import threadpoolctl

    decoded_on = []
    real_decode = extraction.decode_image
    monkeypatch.setattr(extraction, "decode_image",
                        lambda frame: decoded_on.append(threading.current_thread().name) or real_decode(frame))
    gw = make_gateway(runtime="onnx", id="gwonnx", torch_threads=1)
    assert sorted(loop.model.runtime for loop in gw.loops) == ["onnx", "onnx"]
    assert {loop.model.forward.session.get_session_options().intra_op_num_threads for loop in gw.loops} == {1}
    assert {pool["num_threads"] for pool in threadpoolctl.threadpool_info()} == {1}  # no spare BLAS threads
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), runtime="onnx",
                                   bundles=(full_bundles["image"], full_bundles["speech"]), block_ms=50)).start()
    lis = Listener(mosquitto.port, client_id="onnx-listener")
    try:
        assert {s.net.runtime for s in worker.served.values()} == {"onnx"}
        frames = [image_frame("cam1", i, "png") for i in range(4)]
        for f in frames:
            lis.publish("privedge/cam1/image", f.encode())
        for c in utterance("mic1", 10, "u-1", chunks=2):
            lis.publish("privedge/mic1/audio", c.encode())
        assert lis.wait_for(lambda l: len(l.messages["privedge/cam1/result"]) == 4
                            and len(l.messages["privedge/mic1/result"]) == 1, timeout=60)
    finally:
        lis.close()
        worker.stop()
    assert decoded_on and set(decoded_on) == {"gateway-image"}  # never on paho's network thread
    # the served labels and scores are the torch reference's for the same frames
    reference = load_full(full_bundles["image"]).predict_raw([decode_image(f) for f in frames])
    labels = read_manifest(full_bundles["image"])["labels"]
    by_seq = {int(r["id"].rsplit("/", 1)[1]): r for r in lis.json("privedge/cam1/result")}
    for seq, probs in enumerate(reference):
        assert by_seq[seq]["label"] == labels[int(probs.argmax())]
        assert abs(by_seq[seq]["score"] - float(probs.max())) < 1e-4
    (speech,) = lis.json("privedge/mic1/result")
    assert speech["label"] in read_manifest(full_bundles["speech"])["labels"]
    assert gw.failed() is None


def test_an_export_without_a_probe_record_is_checked_against_the_torch_weights(bundles, tmp_path):
    """Bundles exported before the manifest recorded the probe outputs still serve on ONNX Runtime, checked
    against the torch weights themselves (which needs torch); a foreign file is refused there too."""
    d, other = tmp_path / "b", tmp_path / "other"
    shutil.copytree(bundles["speech"], d)
    m = read_manifest(d)
    del m["onnx"]["probe"], m["onnx"]["noise"]
    write_manifest(d, m)
    ext = load_extractor(d, runtime="onnx")
    assert ext.runtime == "onnx" and ext._module is not None  # the torch half was loaded for the check
    xs = _inputs(ext.input_shape, 4)
    np.testing.assert_allclose(ext.extract_batch(xs), load_extractor(d).extract_batch(xs), rtol=1e-4, atol=1e-4)
    make_untrained_bundle(other, "speech", seed=8)
    shutil.copy(other / "extractor.onnx", d / "extractor.onnx")
    m["onnx"]["files"]["extractor.onnx"] = sha256_file(d / "extractor.onnx")
    write_manifest(d, m)
    with pytest.raises(OnnxMismatchError, match="differ from the torch weights by"):
        load_extractor(d, runtime="onnx")
    # with the record, the ONNX half loads without its torch module, and loads it when asked (audit, export)
    lean = load_extractor(bundles["speech"], runtime="onnx")
    assert lean._module is None
    assert sum(p.numel() for p in lean.module.parameters()) > 0 and lean._module is not None
