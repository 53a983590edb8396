"""Bundles authenticated by the provider's signature (models.signing): what a signature covers, and that a
real gateway and a real worker refuse what it does not cover."""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import signing
from models.bundle import load_extractor, make_untrained_bundle, model_id, read_manifest, write_manifest
from models.manifest import sha256_file
from tests.conftest import REPO
from tests.gateway_fixtures import Listener, wait_until


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two providers' keys: ``ours`` (what the tests pin) and ``theirs``."""
    root = tmp_path_factory.mktemp("keys")
    return {name: signing.generate_key(root / name) for name in ("ours", "theirs")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    """A full image bundle signed by ``ours`` (copied by the tests that change it)."""
    d = tmp_path_factory.mktemp("signed") / "image"
    make_untrained_bundle(d, "image", sign_key=keys["ours"][0])
    return d


@pytest.fixture(scope="module")
def other(tmp_path_factory, keys) -> Path:
    """Another provider's image bundle (other weights), signed by ``theirs``."""
    d = tmp_path_factory.mktemp("other") / "image"
    make_untrained_bundle(d, "image", seed=5, sign_key=keys["theirs"][0])
    return d


def copy(bundle: Path, tmp_path: Path, name: str = "b") -> Path:
    return Path(shutil.copytree(bundle, tmp_path / name))


def test_sign_then_verify_round_trip(signed, keys):
    manifest = read_manifest(signed)
    doc = json.loads((signed / signing.SIGNATURE).read_text())
    assert set(doc["files"]) == {"manifest.json", "extractor.pt", "analyzer.pt", "extractor.onnx", "analyzer.onnx",
                                 "face_detector.onnx"}  # an image bundle: its face detector is signed too
    assert doc["model"] == manifest["model"]
    v = signing.verify_bundle(signed, keys["ours"][1])
    assert (v.model, v.part, v.key) == (manifest["model"], "full", doc["key"])
    assert set(v.files) == set(doc["files"])
    assert signing.verify_bundle(signed, keys["ours"][1], "auto").part == "full"


def _changed_manifest(d: Path, other: Path) -> None:
    # Consistent with every hash the loader checks: labels swapped, model id recomputed.
    m = read_manifest(d)
    m["labels"] = m["labels"][::-1]
    m["model"] = model_id(m)
    write_manifest(d, m)


def _replaced_onnx(d: Path, other: Path) -> None:
    # Another graph with the manifest's ONNX hash updated: the model id leaves the onnx key out.
    shutil.copy(other / "extractor.onnx", d / "extractor.onnx")
    m = read_manifest(d)
    m["onnx"]["files"]["extractor.onnx"] = sha256_file(d / "extractor.onnx")
    write_manifest(d, m)


def _replaced_bundle(d: Path, other: Path) -> None:
    # Everything but the signature replaced by another, self-consistent bundle.
    for f in other.iterdir():
        if f.name != signing.SIGNATURE:
            shutil.copy(f, d / f.name)


def _added_file(d: Path, other: Path) -> None:
    (d / "notes.txt").write_text("added after signing\n")


def _removed_file(d: Path, other: Path) -> None:
    (d / "extractor.onnx").unlink()


def _edited_listing(d: Path, other: Path) -> None:
    # The listing itself edited to match a replaced file: the signature no longer covers it.
    _replaced_onnx(d, other)
    doc = json.loads((d / signing.SIGNATURE).read_text())
    doc["files"] = {n: sha256_file(d / n) for n in doc["files"]}
    (d / signing.SIGNATURE).write_text(json.dumps(doc))


TAMPERING = {"changed manifest": (_changed_manifest, "manifest.json: sha256"),
             "replaced onnx": (_replaced_onnx, "changed after signing"),
             "replaced bundle": (_replaced_bundle, "changed after signing"),
             "added file": (_added_file, "notes.txt not in the signed listing"),
             "removed file": (_removed_file, "extractor.onnx signed but missing"),
             "edited listing": (_edited_listing, "does not verify with the pinned key")}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_every_change_after_signing_fails_verification(how, signed, other, keys, tmp_path):
    tamper, message = TAMPERING[how]
    d = copy(signed, tmp_path)
    tamper(d, other)
    if how == "changed manifest":
        load_extractor(d, runtime="torch")  # the manifest's own hashes cannot tell: only the signature can
    for part in ("full", "home"):
        with pytest.raises(signing.SignatureError, match=message):
            signing.verify_bundle(d, keys["ours"][1], part)


def test_a_changed_analyzer_fails_the_full_part_and_a_home_never_reads_it(signed, keys, tmp_path):
    d = copy(signed, tmp_path)
    (d / "analyzer.pt").write_bytes(b"not the signed weights")
    with pytest.raises(signing.SignatureError, match="analyzer.pt: sha256"):
        signing.verify_bundle(d, keys["ours"][1], "full")
    home = signing.verify_bundle(d, keys["ours"][1], "home")
    assert not [f for f in home.files if f.startswith("analyzer.")]


def test_a_home_copy_without_analyzer_files_verifies_as_the_home_part(signed, keys, tmp_path):
    d = copy(signed, tmp_path)
    for name in ("analyzer.pt", "analyzer.onnx"):
        (d / name).unlink()
    assert signing.verify_bundle(d, keys["ours"][1], "auto").part == "home"
    with pytest.raises(signing.SignatureError, match="analyzer.onnx, analyzer.pt signed but missing"):
        signing.verify_bundle(d, keys["ours"][1], "full")


def test_install_copies_the_verified_part_read_only_and_refuses_a_changed_bundle(signed, other, keys, tmp_path):
    from models.bundle_install import install_bundle

    into = tmp_path / "volume"
    dest, changed = install_bundle(signed, into, keys["ours"][1], "home")
    assert changed and sorted(p.name for p in dest.iterdir()) == ["extractor.onnx", "extractor.pt",
                                                                   "face_detector.onnx", "manifest.json",
                                                                   "signature.json"]  # the face stage's too
    assert {oct(p.stat().st_mode & 0o777) for p in dest.iterdir()} == {"0o444"}
    assert oct(dest.stat().st_mode & 0o777) == "0o555"
    assert signing.verify_bundle(dest, keys["ours"][1], "auto").part == "home"
    assert install_bundle(signed, into, keys["ours"][1], "home") == (dest, False)  # already there
    changed_copy = copy(signed, tmp_path, "image")
    (changed_copy / "extractor.onnx").write_bytes(b"a backdoored graph")
    with pytest.raises(signing.SignatureError, match="extractor.onnx: sha256"):
        install_bundle(changed_copy, into, keys["ours"][1], "home")
    with pytest.raises(signing.SignatureError, match="not by the pinned provider key"):
        install_bundle(other, into, keys["ours"][1], "full")
    assert signing.verify_bundle(dest, keys["ours"][1], "home")  # what was installed is untouched
    assert sorted(p.name for p in into.iterdir()) == ["image"]  # no half-made copy left behind
    full, _ = install_bundle(signed, tmp_path / "cloud", keys["ours"][1], "full")
    assert signing.verify_bundle(full, keys["ours"][1], "full").part == "full"


def test_the_wrong_key_fails(other, keys):
    with pytest.raises(signing.SignatureError, match="not by the pinned provider key"):
        signing.verify_bundle(other, keys["ours"][1])


def test_a_link_in_a_bundle_fails(signed, keys, tmp_path):
    d = copy(signed, tmp_path)
    (d / "extra").symlink_to(d / "extractor.pt")
    with pytest.raises(signing.SignatureError, match="not a plain file"):
        signing.verify_bundle(d, keys["ours"][1])


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    key, pub = signing.generate_key(tmp_path / "k")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and pub == tmp_path / "k.pub"
    with pytest.raises(signing.KeyFileError, match="refusing to overwrite"):
        signing.generate_key(key)
    with pytest.raises(signing.KeyFileError, match="not a PEM public key"):
        signing.load_public_key(key)  # a service is never given the private key


def test_a_public_key_is_read_without_cryptography_and_other_keys_are_refused(tmp_path):
    """load_public_key reads RFC 8410's fixed encoding itself: the raw bytes cryptography wrote, while a
    key of another algorithm or a PEM of another kind is refused with what it is."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key, pub = signing.generate_key(tmp_path / "k")
    raw = signing.load_private_key(key).public_key().public_bytes(serialization.Encoding.Raw,
                                                                   serialization.PublicFormat.Raw)
    assert signing.load_public_key(pub).raw == raw
    other = tmp_path / "ec.pub"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(signing.KeyFileError, match="not an Ed25519 one"):
        signing.load_public_key(other)
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(signing.KeyFileError, match="it holds certificate"):
        signing.load_public_key(cert)
    garbled = tmp_path / "g.pub"
    garbled.write_text("-----BEGIN PUBLIC KEY-----\nnot*base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(signing.KeyFileError, match="not a PEM public key"):
        signing.load_public_key(garbled)


def test_check_bundle_refuses_without_a_pinned_key_unless_allowed(signed, tmp_path, caplog):
    d = copy(signed, tmp_path)
    signing.unsign(d)
    with pytest.raises(signing.UnsignedBundleError, match="no provider key pinned"):
        signing.check_bundle(d, key=None, allow_unsigned=False)
    with caplog.at_level(logging.WARNING, logger="models.signing"):
        assert signing.check_bundle(d, key=None, allow_unsigned=True) is None
    assert "allow_unsigned" in caplog.text


def test_resaving_a_bundle_in_place_leaves_it_unsigned(tmp_path, keys):
    d = tmp_path / "b"
    make_untrained_bundle(d, "image", sign_key=keys["ours"][0])
    saved = os.environ.pop(signing.ENV_SIGNING_KEY)
    try:
        make_untrained_bundle(d, "image", seed=2)
    finally:
        os.environ[signing.ENV_SIGNING_KEY] = saved
    with pytest.raises(signing.UnsignedBundleError):
        signing.verify_bundle(d, keys["ours"][1])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "privedge.cli", "bundle", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_bundle_cli_keygen_sign_verify_exit_codes(signed, tmp_path):
    key = tmp_path / "provider.key"
    assert _cli("keygen", "--out", str(key)).returncode == 0
    assert _cli("keygen", "--out", str(key)).returncode == 1  # never overwrites a key
    d = copy(signed, tmp_path)
    out = _cli("verify", "--key", f"{key}.pub", str(d))
    assert out.returncode == 1 and "not by the pinned provider key" in out.stderr
    assert _cli("sign", "--key", str(key), str(d)).returncode == 0
    out = _cli("verify", "--key", f"{key}.pub", str(d))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    (d / "extractor.onnx").write_bytes(b"a backdoored graph")
    out = _cli("verify", "--key", f"{key}.pub", str(d))
    assert out.returncode == 1 and "extractor.onnx" in out.stderr and "changed after signing" in out.stderr
    assert _cli("verify", "--key", str(tmp_path / "missing.pub"), str(d)).returncode == 1


def test_onnx_export_signs_again_or_says_it_must_be_signed(signed, keys, tmp_path):
    d = copy(signed, tmp_path)
    cmd = [sys.executable, "-m", "privedge.cli", "bundle", "export", str(d)]
    env = {k: v for k, v in os.environ.items() if k != signing.ENV_SIGNING_KEY}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "sign it again" in out.stdout, out.stderr
    assert not (d / signing.SIGNATURE).exists()
    out = subprocess.run([*cmd, "--sign-key", str(keys["ours"][0])], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "signed again" in out.stdout, out.stderr
    signing.verify_bundle(d, keys["ours"][1])


# real services ------------------------------------------------------------------------------------------
def _unsigned(signed: Path, tmp_path: Path) -> Path:
    d = copy(signed, tmp_path, "unsigned")
    signing.unsign(d)
    return d


def _gateway(mosquitto, redis_server, bundle: Path, key: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "privedge.cli", "gateway", "--broker", mosquitto.url, "--redis", redis_server.url,
           "--bundle", str(bundle), "--bundle-key", str(key), "--id", "gwsig", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _worker(redis_server, bundle: Path, key: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "privedge.cli", "worker", "--redis", redis_server.url, "--bundle", str(bundle),
           "--bundle-key", str(key), "--name", "wsig", "--block-ms", "50", *extra]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120, log: Path | None = None) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, log.read_text() if log is not None else out


@pytest.mark.integration
@pytest.mark.parametrize("case", ["unsigned", "other provider", "replaced onnx"])
def test_gateway_refuses_a_bundle_the_pinned_key_did_not_sign(case, mosquitto, redis_server, signed, other, keys,
                                                               tmp_path):
    d = {"unsigned": lambda: _unsigned(signed, tmp_path), "other provider": lambda: other,
         "replaced onnx": lambda: (_replaced_onnx(b := copy(signed, tmp_path), other), b)[1]}[case]()
    rc, out = _finish(_gateway(mosquitto, redis_server, d, keys["ours"][1]))
    want = {"unsigned": "unsigned bundle", "other provider": "not by the pinned provider key",
            "replaced onnx": "extractor.onnx: sha256"}[case]
    assert rc == 1 and "cannot load bundle" in out and want in out, out[-3000:]


@pytest.mark.integration
def test_gateway_loads_an_unsigned_bundle_only_with_allow_unsigned(mosquitto, redis_server, signed, keys,
                                                                  tmp_path):
    d = _unsigned(signed, tmp_path)
    lis = Listener(mosquitto.port, client_id="sig-listener")
    proc = _gateway(mosquitto, redis_server, d, keys["ours"][1], "--allow-unsigned")
    try:
        online = lis.wait_for(lambda l: l.messages["privedge/gateway/gwsig/status"][-1:] == [b"online"], 120)
        proc.terminate()
        rc, out = _finish(proc, 60)
    finally:
        lis.close()
    assert online and rc == 0, out[-3000:]
    assert "unsigned bundle" in out and "loading it anyway (allow_unsigned)" in out


@pytest.mark.integration
@pytest.mark.parametrize("case", ["unsigned", "other provider"])
def test_worker_refuses_a_bundle_the_pinned_key_did_not_sign(case, redis_server, signed, other, keys, tmp_path):
    d = _unsigned(signed, tmp_path) if case == "unsigned" else other
    log = tmp_path / "worker.log"
    rc, out = _finish(_worker(redis_server, d, keys["ours"][1], log), log=log)
    want = "unsigned bundle" if case == "unsigned" else "not by the pinned provider key"
    assert rc == 1 and "refusing to serve" in out and want in out, out[-3000:]


@pytest.mark.integration
def test_worker_serves_an_unsigned_bundle_only_with_allow_unsigned(redis_server, signed, keys, tmp_path):
    d = _unsigned(signed, tmp_path)
    log = tmp_path / "worker.log"
    proc = _worker(redis_server, d, keys["ours"][1], log, "--allow-unsigned")
    started = wait_until(lambda: f"serving {read_manifest(d)['model']}" in log.read_text(), timeout=120)
    time.sleep(0.5)
    alive = proc.poll() is None
    proc.terminate()
    rc, out = _finish(proc, 60, log)
    assert started and alive and rc == 0, out[-3000:]
    assert "unsigned bundle" in out and "loading it anyway (allow_unsigned)" in out


def test_services_pin_the_key_from_the_environment(provider_key):
    from gateway.config import GatewaySettings
    from workers.config import WorkerSettings

    assert GatewaySettings().bundle_key == str(provider_key[1]) and GatewaySettings().allow_unsigned is False
    w = WorkerSettings(bundles=("b",))
    assert w.bundle_key == str(provider_key[1]) and w.allow_unsigned is False


def test_the_demo_cache_trusts_only_bundles_its_own_key_signed(tmp_path, keys, monkeypatch, provider_key):
    from privedge.demo_bundles import DemoBundle, cached_bundle, key_args
    from privedge.demo_bundles import provider_key as demo_key

    cache = tmp_path / "cache"
    assert demo_key(cache) == provider_key  # PRIVEDGE_SIGNING_KEY, when set, is the provider
    monkeypatch.delenv(signing.ENV_SIGNING_KEY)
    key, pub = demo_key(cache)
    assert key == cache / "provider.key"
    assert demo_key(cache) == (key, pub) and stat.S_IMODE(key.stat().st_mode) == 0o600  # made once
    make_untrained_bundle(cache / "image-x", "image", sign_key=key)
    assert cached_bundle(cache, "image-x") == cache / "image-x"
    make_untrained_bundle(cache / "image-y", "image", sign_key=keys["theirs"][0])
    make_untrained_bundle(cache / "image-z", "image")
    signing.unsign(cache / "image-z")
    assert cached_bundle(cache, "image-y") is None and cached_bundle(cache, "image-z") is None  # trained again
    assert key_args([DemoBundle("image", cache / "image-x", public_key=pub)]) == ["--bundle-key", str(pub)]
    assert key_args([DemoBundle("image", cache / "image-x")]) == []  # given bundles: PRIVEDGE_BUNDLE_KEY


def test_the_compose_services_pin_the_provider_key():
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["configs"]["provider_key"] == {"file": "./keys/provider.key.pub"}
    for name, settings in (("gateway", "gateway.yaml"), ("worker", "worker.yaml")):
        key = yaml.safe_load((REPO / "deploy" / settings).read_text())["bundle_key"]
        assert {"source": "provider_key", "target": key} in compose["services"][name]["configs"]
    for name in ("home-bundles", "cloud-bundles"):  # the one-shots that install the bundles verify them too
        command = compose["services"][name]["command"]
        key = command[command.index("--key") + 1]
        assert {"source": "provider_key", "target": key} in compose["services"][name]["configs"]
