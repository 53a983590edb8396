"""The ``privedge`` console script.

It only picks the subcommand and hands the remaining arguments to the module that owns it, so that
``privedge sensor`` never imports torch and each package keeps its own argument parser.
"""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Each module exposes ``main(argv: list[str]) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("privedge.demo", "run the whole system locally: broker, Redis, gateway, workers, sensors"),
    "train": ("models.train", "train an extractor/analyzer bundle"),
    "audit": ("models.audit.cli", "measure what an attacker learns from a bundle's features"),
    "gateway": ("gateway.service", "run the home gateway (MQTT in, features to Redis, results back)"),
    "worker": ("workers.service", "run a cloud analyzer worker (Redis Streams consumer)"),
    "sensor": ("sensors.cli", "run a camera or microphone sensor client"),
    "broker": ("broker.tool", "start a local mosquitto broker, enrol devices"),
    "bench": ("bench.cli", "benchmark split vs cloud-only vs local-only"),
}


def _usage() -> str:
    lines = ["usage: privedge COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "privedge COMMAND --help shows the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"privedge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
