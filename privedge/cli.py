"""The ``privedge`` console script.

It only picks the subcommand and hands the remaining arguments to the module that owns it, so that
``privedge sensor`` never imports torch and each package keeps its own argument parser. ``privedge
bundle`` (keygen, sign, verify, install, export) is parsed here and calls :mod:`models.signing`, which imports no
torch (``export`` calls :func:`models.bundle.export_onnx`, which does).
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import signal
import sys

# subcommand -> (module, one-line help). Each module exposes ``main(argv: list[str]) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("privedge.demo", "run the whole system locally: broker, Redis, gateway, workers, sensors"),
    "train": ("models.train_cli", "train an extractor/analyzer bundle"),
    "audit": ("models.audit.cli", "measure what an attacker learns from a bundle's features"),
    "gateway": ("gateway.service", "run the home gateway (MQTT in, features to Redis, results back)"),
    "worker": ("workers.service", "run a cloud analyzer worker (Redis Streams consumer)"),
    "sensor": ("sensors.cli", "run a camera or microphone sensor client, or the Frigate bridge"),
    "broker": ("broker.tool", "start a local mosquitto broker, enrol devices"),
    "bench": ("bench.cli", "benchmark split vs cloud-only vs local-only"),
    "bundle": ("privedge.cli:bundle_main", "provider keys, bundle signatures, ONNX copies of a bundle's halves"),
}


def _usage() -> str:
    lines = ["usage: privedge COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "privedge COMMAND --help shows the options of one command."]
    return "\n".join(lines)


def bundle_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge bundle", description="provider keys and bundle signatures")
    sub = p.add_subparsers(dest="action", required=True)
    keygen = sub.add_parser("keygen", help="new Ed25519 provider key: KEY (mode 600) and KEY.pub")
    keygen.add_argument("--out", required=True, help="private key file to write; the public key goes to OUT.pub")
    sign = sub.add_parser("sign", help="sign every file of a bundle with the provider's private key")
    sign.add_argument("--key", required=True, help="provider private key file")
    sign.add_argument("dirs", nargs="+", metavar="DIR", help="bundle directories")
    verify = sub.add_parser("verify", help="check a bundle against the provider's public key (exit 0 or 1)")
    verify.add_argument("--key", required=True, help="provider public key file (KEY.pub)")
    verify.add_argument("--part", choices=("auto", "full", "home"), default="auto",
                        help="full: every signed file; home: all but analyzer.*; auto (default): home when "
                             "the bundle holds no analyzer file")
    verify.add_argument("dirs", nargs="+", metavar="DIR", help="bundle directories")
    install = sub.add_parser("install", help="verify bundles and install read-only copies of their part into "
                                             "a folder (a deployment's bundles volume)")
    install.add_argument("--key", required=True, help="provider public key file (KEY.pub)")
    install.add_argument("--part", choices=("full", "home"), default="full",
                         help="home: all but analyzer.* (for a gateway); full (default): every file")
    install.add_argument("--into", required=True, help="folder that receives one sub-folder per bundle")
    install.add_argument("dirs", nargs="+", metavar="DIR", help="bundle directories")
    export = sub.add_parser("export", help="add extractor.onnx (and analyzer.onnx) to existing bundles; "
                                           "voids their signature unless signed again")
    export.add_argument("--sign-key", default=os.environ.get("PRIVEDGE_SIGNING_KEY"),
                        help="provider private key to sign the bundles again with (default: PRIVEDGE_SIGNING_KEY)")
    export.add_argument("dirs", nargs="+", metavar="DIR", help="bundle directories")
    return p


def bundle_main(argv: list[str]) -> int:
    """``privedge bundle keygen|sign|verify|install|export``; 0 on success, 1 when a key or a bundle fails."""
    from models import signing

    args = bundle_parser().parse_args(argv)
    if args.action == "export":
        return _export(args.dirs, args.sign_key)
    if args.action == "install":
        return _install(args.dirs, args.key, args.part, args.into)
    try:
        if args.action == "keygen":
            key, pub = signing.generate_key(args.out)
            print(f"private key {key} (keep it with the provider; mode 600)\npublic key  {pub} (pin it as "
                  f"bundle_key on gateways and workers)\n"
                  f"fingerprint {signing.fingerprint(signing.load_public_key(pub))}")
            return 0
        key = signing.load_private_key(args.key) if args.action == "sign" else signing.load_public_key(args.key)
    except signing.SignatureError as e:
        print(f"privedge bundle {args.action}: {e}", file=sys.stderr)
        return 1
    except ImportError as e:  # keygen and sign are the provider's: cryptography comes with the train extra
        print(f"privedge bundle {args.action}: needs {e.name} (pip install 'privedge[train]'); a home or a "
              "worker only verifies", file=sys.stderr)
        return 1
    failed = 0
    for d in args.dirs:
        try:
            if args.action == "sign":
                doc = signing.sign_bundle(d, key)
                print(f"{d}: signed model {doc['model']} ({len(doc['files'])} files) with key {doc['key'][:16]}...")
            else:
                v = signing.verify_bundle(d, key, args.part)
                print(f"{d}: OK, model {v.model} signed by {v.key[:16]}... ({v.part} part, {len(v.files)} files)")
        except (signing.SignatureError, OSError) as e:
            print(f"{d}: FAILED: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _install(dirs: list[str], key: str, part: str, into: str) -> int:
    from models import signing
    from models.bundle_install import install_bundle

    failed = 0
    for d in dirs:
        try:
            dest, changed = install_bundle(d, into, key, part)
            print(f"{d}: {'installed' if changed else 'already installed'} as {dest} ({part} part)")
        except (signing.SignatureError, OSError) as e:
            print(f"{d}: FAILED: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _export(dirs: list[str], sign_key: str | None) -> int:
    from models import signing
    from models.bundle import BundleError, export_onnx

    failed = 0
    for d in dirs:
        try:
            entry = export_onnx(d)
            print(f"{d}: {', '.join(f'{n} sha256 {h[:16]}...' for n, h in entry['files'].items())}")
            if sign_key:
                doc = signing.sign_bundle(d, sign_key)
                print(f"{d}: signed again with key {doc['key'][:16]}...")
            else:
                print(f"{d}: unsigned now; sign it again with privedge bundle sign --key KEY {d}")
        except (BundleError, signing.SignatureError, OSError) as e:
            print(f"{d}: FAILED: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"privedge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # SIGUSR1 prints every thread's stack to stderr (the log): how a process that will not stop is diagnosed.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    module_name, _, function = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, function or "main")(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
