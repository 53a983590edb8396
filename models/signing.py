"""Bundle signatures: the provider signs a bundle, the services that load it pin the provider's key.

Trust model.

- The **provider** (whoever trains the models) holds an Ed25519 private key (``privedge bundle keygen``;
  the file is mode 600 and never leaves the provider). It signs each bundle it ships
  (``privedge train --sign-key``, ``privedge bundle sign``).
- A **home** (the gateway) and the **cloud** (the workers) hold only the provider's public key, pinned in
  their settings (``bundle_key``). At start each service verifies every bundle it was given against
  that key and refuses to start on an unsigned bundle, a bad signature, or a bundle whose files differ
  from what was signed. A service with no pinned key refuses too: there is no trust on first use.
- The signature (``signature.json`` in the bundle) covers a canonical listing of **every** file of the
  bundle, each name with its sha256: ``manifest.json`` (and through it the model id, the labels, the
  input spec, the weight hashes), ``extractor.pt``, ``analyzer.pt``, the ONNX graphs, ``metrics.json``.
  A file added, removed or changed breaks it, so a replaced bundle or a backdoored ONNX graph is refused
  before anything is unpickled or run: verification parses only JSON and hashes bytes.
- A home receives the bundle without its ``analyzer.*`` files (it never needs them, and a gateway must
  not even read them). Verification therefore has two parts: ``full`` (every listed file present and
  unchanged, nothing else there) and ``home`` (the same for every file but ``analyzer.*``, which may be
  absent and are not read when present; a name not in the signed listing still fails).
- ``allow_unsigned`` gives all of that up: the service loads what it finds and logs a warning with the
  reason it would have refused. It is for development on bundles nobody signed. It accepts a wrongly
  signed bundle too, since deleting ``signature.json`` would get the same bundle accepted anyway; the
  hash checks of :mod:`models.bundle` still apply, but they only bind files to a manifest that anyone
  who can write the directory can rewrite.
- Not covered: a directory rewritten between the check and the load (the bundle directory must not be
  writable by whoever the key protects against), key revocation or rotation (replace the pinned key
  file), and the confidentiality of the weights.

Ed25519 is never hand-written maths: the provider (keygen, signing) uses ``cryptography`` (the ``train``
extra), the services verify with PyNaCl (libsodium, also pyca's): 1 MiB of a home gateway's memory where
``cryptography`` took 9. Keys are PEM files: PKCS#8 private, SubjectPublicKeyInfo public. The one piece
written here: by RFC 8410 an Ed25519 SubjectPublicKeyInfo is a fixed 12-byte DER prefix and the 32 key
bytes, so :func:`load_public_key` checks the prefix instead of parsing ASN.1.
The module imports neither torch nor ONNX Runtime, so a home verifies before it loads either.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from models.manifest import sha256_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

SIGNATURE = "signature.json"
MANIFEST = "manifest.json"  # models.bundle.MANIFEST, repeated so that verifying imports no torch
FORMAT = 1
ALGORITHM = "ed25519"
CONTEXT = b"privedge bundle signature v1\n"
"""Prefix of the signed bytes, so that a privedge bundle signature can never be taken for another one."""
HOME_SKIPPED = ("analyzer.",)
"""File name prefixes a home never reads; the ``home`` part leaves them out."""
PARTS = ("full", "home", "auto")
"""``full``: every signed file; ``home``: all but ``analyzer.*``; ``auto``: home when no analyzer file is
there, else full."""
MAX_SIGNATURE_BYTES = 1 << 20
"""Largest ``signature.json`` read (bytes): a listing of a few files is well under a kilobyte."""
ENV_SIGNING_KEY = "PRIVEDGE_SIGNING_KEY"
"""Environment variable naming the provider's private key file: what saves a bundle signs it."""
ENV_BUNDLE_KEY = "PRIVEDGE_BUNDLE_KEY"
"""Environment variable naming the provider's public key file that services pin (``bundle_key``)."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410, section 4)."""
_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END \1-----")


class SignatureError(Exception):
    """A bundle is not signed by the pinned key, or its files differ from what was signed."""


class UnsignedBundleError(SignatureError):
    """A bundle has no ``signature.json``, or no provider key is pinned to check it with."""


class KeyFileError(SignatureError):
    """A key file cannot be read, is not an Ed25519 key of the expected kind, or would be overwritten."""


@dataclass(frozen=True)
class Verified:
    """What a successful verification established."""

    dir: Path
    model: str
    part: str
    key: str
    """sha256 fingerprint (hex) of the public key that signed."""
    files: tuple[str, ...]
    """The files whose hashes were checked."""


# keys ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublicKey:
    """A provider's Ed25519 public key: its 32 raw bytes."""

    raw: bytes

    def verify(self, signature: bytes, payload: bytes) -> None:
        """Raise ValueError unless ``signature`` is this key's over ``payload``."""
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey

        try:
            VerifyKey(self.raw).verify(payload, signature)
        except BadSignatureError as e:
            raise ValueError(str(e)) from e


def fingerprint(public_key: PublicKey) -> str:
    """sha256 (hex) of the raw 32-byte public key: how messages and ``signature.json`` name a key."""
    return hashlib.sha256(public_key.raw).hexdigest()


def _public_of(key: "Ed25519PrivateKey") -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    return PublicKey(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _public_pem(key: "Ed25519PrivateKey") -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_path(private_path: str | os.PathLike) -> Path:
    """Where :func:`generate_key` puts the public half of ``private_path``: ``{private_path}.pub``."""
    return Path(f"{os.fspath(private_path)}.pub")


def generate_key(path: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new provider key: the private key at ``path`` (PEM, mode 600) and the public key at
    ``path.pub``; returns both paths. Refuses to overwrite either (KeyFileError)."""
    path, pub = Path(path), public_path(path)
    for p in (path, pub):
        if p.exists():
            raise KeyFileError(f"{p} exists; refusing to overwrite a key (remove it first)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, even briefly
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub.write_bytes(_public_pem(key))
    except OSError as e:
        raise KeyFileError(f"cannot write key {path}: {e}") from e
    log.info("new provider key %s (public %s, fingerprint %s)", path, pub, fingerprint(_public_of(key))[:16])
    return path, pub


def load_private_key(path: str | os.PathLike) -> "Ed25519PrivateKey":
    """The Ed25519 private key in PEM file ``path``; KeyFileError otherwise. Warns when others can read it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as e:
        raise KeyFileError(f"cannot read signing key {path}: {e}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("signing key %s is readable by others (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike) -> PublicKey:
    """The Ed25519 public key in PEM file ``path``; KeyFileError otherwise (a private key is refused: a
    service should never hold one)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read bundle key {path}: {e}") from e
    found = _PEM.search(data)
    if found is None or found.group(1) != b"PUBLIC KEY":
        what = found.group(1).decode().lower() if found else "no PEM block"
        raise KeyFileError(f"{path} is not a PEM public key (give the .pub file, not the private key): it holds "
                           f"{what}")
    try:
        der = base64.b64decode(b"".join(found.group(2).split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyFileError(f"{path} is not a PEM public key: {e}") from e
    if len(der) != len(SPKI_PREFIX) + 32 or not der.startswith(SPKI_PREFIX):
        raise KeyFileError(f"{path} holds a public key that is not an Ed25519 one")
    return PublicKey(der[len(SPKI_PREFIX):])


def signing_key_from_env() -> Path | None:
    """The private key file named by ``PRIVEDGE_SIGNING_KEY``, or None."""
    value = os.environ.get(ENV_SIGNING_KEY)
    return Path(value) if value else None


def local_provider(dir: str | os.PathLike) -> tuple[Path, Path]:
    """A provider key for bundles made and served on this machine (benchmarks, the demo): the one named by
    ``PRIVEDGE_SIGNING_KEY`` if set, else a new one in ``dir``. Sets ``PRIVEDGE_SIGNING_KEY`` (so every
    bundle this process saves is signed) and, unless set, ``PRIVEDGE_BUNDLE_KEY`` (so the services it
    starts, which inherit the environment, pin it). Returns (private key, public key) paths. Only for
    entry points: it changes this process's environment."""
    key = signing_key_from_env()
    if key is None:
        key = Path(dir) / "provider.key"
        if not key.exists():
            generate_key(key)
    pub = public_path(key)
    if not pub.exists():  # a key given by the environment without its public half beside it
        pub = Path(dir) / "provider.key.pub"
        pub.parent.mkdir(parents=True, exist_ok=True)
        pub.write_bytes(_public_pem(load_private_key(key)))
    os.environ[ENV_SIGNING_KEY] = str(key)
    os.environ.setdefault(ENV_BUNDLE_KEY, str(pub))
    return key, pub


# the signed listing -------------------------------------------------------------------------------------
def _file_names(dir: Path) -> set[str]:
    """Names of the regular files in ``dir`` but the signature; SignatureError on anything else there (a
    bundle is a flat folder of plain files: a link or a folder could smuggle in what no hash covers)."""
    try:
        entries = list(os.scandir(dir))
    except OSError as e:
        raise SignatureError(f"cannot list bundle {dir}: {e}") from e
    names = set()
    for entry in entries:
        if entry.name == SIGNATURE:
            continue
        if not entry.is_file(follow_symlinks=False):
            raise SignatureError(f"{dir}/{entry.name}: not a plain file; a bundle holds only plain files")
        names.add(entry.name)
    return names


def _payload(doc: dict) -> bytes:
    """The bytes that are signed: the context line, then the canonical JSON of everything but the signature."""
    core = {k: doc[k] for k in ("format", "algorithm", "key", "model", "files")}
    return CONTEXT + json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _model_of(dir: Path) -> str:
    try:
        model = json.loads((dir / MANIFEST).read_text()).get("model")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise SignatureError(f"{dir}: no readable {MANIFEST} to sign: {e}") from e
    if not isinstance(model, str):
        raise SignatureError(f"{dir}/{MANIFEST}: no model id")
    return model


def sign_bundle(dir: str | os.PathLike, key: "str | os.PathLike | Ed25519PrivateKey") -> dict:
    """Sign every file now in bundle ``dir`` with the provider's private ``key`` (a key or its PEM file):
    writes ``signature.json`` (atomically) and returns its content."""
    dir = Path(dir)
    if isinstance(key, (str, os.PathLike)):
        key = load_private_key(key)
    files = {name: sha256_file(dir / name) for name in sorted(_file_names(dir))}
    doc = {"format": FORMAT, "algorithm": ALGORITHM, "key": fingerprint(_public_of(key)),
           "model": _model_of(dir), "files": files}
    doc["signature"] = base64.b64encode(key.sign(_payload(doc))).decode()
    tmp = dir / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, dir / SIGNATURE)
    log.info("signed bundle %s (%s, %d files) with key %s", dir, doc["model"], len(files), doc["key"][:16])
    return doc


def unsign(dir: str | os.PathLike) -> bool:
    """Remove ``dir``'s signature (what rewrites a signed bundle calls: the old one no longer holds);
    returns whether there was one."""
    path = Path(dir) / SIGNATURE
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _read_signature(dir: Path) -> dict:
    path = dir / SIGNATURE
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError:
        raise UnsignedBundleError(f"{dir}: unsigned bundle (no {SIGNATURE}); the provider signs it with "
                                  f"privedge bundle sign --key KEY {dir}") from None
    except OSError as e:
        raise SignatureError(f"cannot read {path}: {e}") from e
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{path}: larger than {MAX_SIGNATURE_BYTES} bytes; not a privedge signature")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise SignatureError(f"{path}: not valid JSON: {e}") from e
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("algorithm") == ALGORITHM
          and all(isinstance(doc.get(k), str) for k in ("key", "model", "signature"))
          and isinstance(doc.get("files"), dict)
          and all(isinstance(n, str) and isinstance(h, str) and _SHA256.match(h) for n, h in doc["files"].items()))
    if not ok:
        raise SignatureError(f"{path}: not a privedge bundle signature of format {FORMAT} ({ALGORITHM})")
    for name in doc["files"]:
        if name in ("", ".", "..", SIGNATURE) or "/" in name or "\\" in name or "\0" in name:
            raise SignatureError(f"{path}: lists {name!r}, which is not a file name inside the bundle")
    return doc


def verify_bundle(dir: str | os.PathLike, public_key: str | os.PathLike | PublicKey,
                  part: str = "full") -> Verified:
    """Check that bundle ``dir`` is what the holder of ``public_key`` (a key or its PEM file) signed.

    ``part``: ``full``, ``home`` or ``auto`` (see PARTS). Checks the signature over the listing first,
    then that no file outside the listing is there, that every file of the part is, and their sha256.
    Reads only ``signature.json`` and the bytes it hashes; raises SignatureError (UnsignedBundleError
    when there is no signature)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    dir = Path(dir)
    if not isinstance(public_key, PublicKey):
        public_key = load_public_key(public_key)
    doc = _read_signature(dir)
    pinned = fingerprint(public_key)
    try:
        public_key.verify(base64.b64decode(doc["signature"], validate=True), _payload(doc))
    except (binascii.Error, ValueError) as e:
        if doc["key"] != pinned:
            raise SignatureError(f"{dir}: signed by key {doc['key'][:16]}..., not by the pinned provider key "
                                 f"{pinned[:16]}...; refusing a bundle from another provider") from e
        raise SignatureError(f"{dir}: {SIGNATURE} does not verify with the pinned key {pinned[:16]}... (the "
                             "listing or the signature was altered)") from e
    listed = doc["files"]
    present = _file_names(dir)
    added = sorted(present - set(listed))
    if added:
        raise SignatureError(f"{dir}: {', '.join(added)} not in the signed listing (added after signing)")
    if part == "auto":
        part = "full" if any(n.startswith(HOME_SKIPPED) for n in present) else "home"
    needed = sorted(n for n in listed if part == "full" or not n.startswith(HOME_SKIPPED))
    missing = [n for n in needed if n not in present]
    if missing:
        raise SignatureError(f"{dir}: {', '.join(missing)} signed but missing (removed after signing; "
                             f"checked as the {part} part)")
    for name in needed:
        got = sha256_file(dir / name)
        if got != listed[name]:
            raise SignatureError(f"{dir}/{name}: sha256 {got[:16]}... is not the signed {listed[name][:16]}... "
                                 "(changed after signing)")
    manifest_model = _model_of(dir)
    if manifest_model != doc["model"]:  # the manifest's hash matched, so only a signer's slip gets here
        raise SignatureError(f"{dir}: signed as model {doc['model']} but the manifest says {manifest_model}")
    return Verified(dir, doc["model"], part, pinned, tuple(needed))


def check_bundle(dir: str | os.PathLike, *, key: str | os.PathLike | None, allow_unsigned: bool,
                 part: str = "full") -> Verified | None:
    """The services' gate, called before a bundle's weights are loaded: :func:`verify_bundle` against the
    pinned public ``key`` file. Raises SignatureError when it fails or no key is pinned, unless
    ``allow_unsigned``: then logs a warning and returns None. An unreadable pinned key always raises."""
    if key is None:
        if allow_unsigned:
            log.warning("bundle %s: no provider key pinned; loading it unverified (allow_unsigned)", dir)
            return None
        raise UnsignedBundleError(f"no provider key pinned to verify bundle {dir} (set bundle_key: "
                                  f"--bundle-key PUB or {ENV_BUNDLE_KEY}); allow_unsigned loads it unverified")
    public_key = load_public_key(key)
    try:
        verified = verify_bundle(dir, public_key, part)
    except SignatureError as e:
        if not allow_unsigned:
            raise
        log.warning("%s; loading it anyway (allow_unsigned)", e)
        return None
    log.info("bundle %s: model %s signed by %s (%s part, %d files)", dir, verified.model, verified.key[:16],
             verified.part, len(verified.files))
    return verified
