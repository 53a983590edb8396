"""Run docker-compose.yml without Docker: each service's command, environment and healthcheck as a local
process, in dependency order, with the real mosquitto and redis-server binaries.

What a container would give a service is mapped onto this machine by small explicit tables: every mount
target (a named volume, a bind mount, a config, a secret) to a path under the test's folder, the service
host names to 127.0.0.1, the container ports to free local ports (one per replica), and the images' users
to the user running the test. Our images' entrypoint and ENV come from the Dockerfile stage a service
builds. Config files the services read settings from are mapped the same way (:data:`TRANSLATED_CONFIGS`);
secrets are mounted as they are. Nothing else is changed: what runs is the file's own commands.
"""
from __future__ import annotations

import getpass
import grp
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from broker.servers import free_port

REPO = Path(__file__).resolve().parents[1]
HOSTS = {"mosquitto": "127.0.0.1", "redis": "127.0.0.1"}
"""Compose service names used as host names -> where the local process listens."""
PORTS = (1883, 6379, 9100, 9200)
"""Container ports the services listen on or name; each gets a free local port (per replica)."""
USERS = ("mosquitto",)
"""Users the images switch to, named in commands and configs -> the user running the test."""
TRANSLATED_CONFIGS = ("mosquitto_conf", "gateway_settings", "worker_settings")
"""Configs holding paths, host names and ports (the others, a key and an ACL, are mounted as they are)."""
IMAGE_ENTRYPOINT = {"privedge": [sys.executable, "-m", "privedge.cli"]}
"""Our images' ENTRYPOINT -> the same program here."""

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``) over
    every string in ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        got = env.get(name)
        if op in (":-", "-"):
            return got if got or (op == "-" and got is not None) else arg
        if op in (":?", "?") and not got:
            raise ValueError(f"{name}: {arg}")
        return got or ""
    return _VAR.sub(one, value)


def dockerfile_stages(path: Path) -> dict[str, dict]:
    """stage -> {"env": {...}, "entrypoint": [...]}, following ``FROM stage AS name``."""
    stages: dict[str, dict] = {}
    current = None
    for line in path.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "FROM":
            base = stages.get(words[1], {"env": {}, "entrypoint": None})
            current = stages.setdefault(words[3], {"env": dict(base["env"]), "entrypoint": base["entrypoint"]})
        elif words[0] == "ENV" and current is not None:
            key, _, value = words[1].partition("=")
            current["env"][key] = value
        elif words[0] == "ENTRYPOINT" and current is not None:
            current["entrypoint"] = yaml.safe_load(line.split(None, 1)[1])
    return stages


def start_order(services: dict[str, dict]) -> list[str]:
    """The services, each after those it depends on."""
    done: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in done:
            return
        if name in seen:
            raise ValueError(f"dependency cycle through {name}")
        for dep, how in services[name].get("depends_on", {}).items():
            if dep in services:
                visit(dep, (*seen, name))
            elif how.get("required", True):
                raise ValueError(f"{name} depends on {dep}, which is not there")
        done.append(name)
    for name in services:
        visit(name)
    return done


@dataclass
class Replica:
    service: str
    index: int
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    log: Path
    proc: subprocess.Popen | None = None


@dataclass
class LocalCompose:
    """docker-compose.yml's ``profiles`` as local processes under ``root``, with ``project`` as the
    compose project folder (its ./bundles, ./keys, ./secrets; ./deploy is the repository's)."""

    compose_file: Path
    project: Path
    root: Path
    profiles: tuple[str, ...]
    scale: dict[str, int] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    running: list[Replica] = field(default_factory=list)
    ports: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        doc = interpolate(yaml.safe_load(self.compose_file.read_text()), self.variables)
        self.doc = doc
        self.services = {n: s for n, s in doc["services"].items() if set(s.get("profiles", ())) & set(self.profiles)}
        self.stages = dockerfile_stages(REPO / "Dockerfile")
        self.user, self.group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name

    # mapping ---------------------------------------------------------------------------------------
    def port(self, service: str, container_port: int, index: int = 0) -> int:
        """The local port standing for ``container_port`` (ports a service only names, such as the
        broker's 1883 in the gateway's settings, map to the port of the service that listens)."""
        owner = {1883: "mosquitto", 6379: "redis"}.get(container_port, service)
        key = (owner, container_port, index if owner == service else 0)
        return self.ports.setdefault(key, free_port())

    def _translate(self, text: str, service: str, index: int, mounts: dict[str, Path]) -> str:
        # Ports and hosts first: the local paths put in next may hold digits of their own.
        for p in PORTS:
            text = re.sub(rf"(?<![\w.]){p}(?!\d)", str(self.port(service, p, index)), text)
        for host, local in HOSTS.items():
            text = re.sub(rf"(?<=[/@]){host}(?=:\d)", local, text)
            text = re.sub(rf"(?m)^(listener \d+ ){host}$", rf"\g<1>{local}", text)
        for target in sorted(mounts, key=len, reverse=True):
            local = str(mounts[target])
            text = re.sub(rf"(?<![\w./-]){re.escape(target)}(?![\w.-])", lambda m: local, text)
        for user in USERS:
            text = re.sub(rf"(-[og] ){user}\b", lambda m: m.group(1) + (self.user if m.group(1) == "-o " else self.group), text)
            text = re.sub(rf"(?m)^user {user}$", f"user {self.user}", text)
        return text

    def _source(self, path: str) -> Path:
        return (self.project / path).resolve()

    def _mounts(self, name: str, svc: dict, index: int) -> tuple[dict[str, Path], list[tuple[Path, Path]]]:
        """Mount target -> local path; and the (local copy, source) of the configs to translate."""
        mounts: dict[str, Path] = {}
        translated: list[tuple[Path, Path]] = []
        for v in svc.get("volumes", ()):
            source, target = v.split(":")[:2]
            local = self._source(source) if source.startswith(".") else self.root / "volumes" / source
            local.mkdir(parents=True, exist_ok=True)
            mounts[target] = local
        for kind in ("secrets", "configs"):
            for entry in svc.get(kind, ()):
                entry = {"source": entry} if isinstance(entry, str) else entry
                src = entry["source"]
                target = entry.get("target") or (f"/run/secrets/{src}" if kind == "secrets" else f"/{src}")
                file = self._source(self.doc[kind][src]["file"])
                if kind == "configs" and src in TRANSLATED_CONFIGS:
                    copy = self.root / "configs" / f"{name}-{index}" / Path(target).name
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    mounts[target] = copy
                    translated.append((copy, file))
                else:
                    mounts[target] = file
        return mounts, translated

    def replica(self, name: str, index: int = 0) -> Replica:
        """Service ``name``'s replica ``index`` as a local command, environment and healthcheck."""
        svc = self.services[name]
        mounts, translated = self._mounts(name, svc, index)
        for copy, file in translated:  # after all mounts are known: a config names other mounts
            copy.write_text(self._translate(file.read_text(), name, index, mounts))
        tr = lambda s: self._translate(str(s), name, index, mounts)  # noqa: E731
        stage = self.stages[svc["build"]["target"]] if "build" in svc else None
        command = [tr(a) for a in svc.get("command", [])]
        if stage is not None:
            command = [*IMAGE_ENTRYPOINT[stage["entrypoint"][0]], *stage["entrypoint"][1:], *command]
        env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
               "HOME": str(self.root), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
        env.update((stage or {"env": {}})["env"])
        env.update({k: tr(v) for k, v in (svc.get("environment") or {}).items()})
        health = None
        if "healthcheck" in svc:
            kind, *test = svc["healthcheck"]["test"]
            if kind == "CMD-SHELL":
                health = ["sh", "-c", tr(test[0])]
            else:
                health = [tr(a) for a in test]
                if health[0] in IMAGE_ENTRYPOINT:
                    health = [*IMAGE_ENTRYPOINT[health[0]], *health[1:]]
        log = self.root / "logs" / f"{name}-{index}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        return Replica(name, index, command, env, health, log)

    # running ---------------------------------------------------------------------------------------
    def up(self, healthy_within_s: float = 60.0) -> None:
        """Start every service in dependency order: a one-shot (``restart: "no"``) runs to success, the
        others start (their replicas together) and are waited on until their healthcheck passes."""
        for name in start_order(self.services):
            svc = self.services[name]
            replicas = [self.replica(name, i) for i in range(self.scale.get(name, 1))]
            if svc.get("restart") == "no":
                for r in replicas:
                    with open(r.log, "wb") as out:
                        rc = subprocess.run(r.argv, env=r.env, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                            timeout=120).returncode
                    assert rc == 0, f"one-shot {name} exited {rc}: {self.tail(r)}"
                continue
            for r in replicas:
                out = open(r.log, "wb")
                r.proc = subprocess.Popen(r.argv, env=r.env, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
                out.close()
                self.running.append(r)
            for r in replicas:
                self.wait_healthy(r, healthy_within_s)

    def wait_healthy(self, r: Replica, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if r.proc.poll() is not None:
                raise AssertionError(f"{r.service} exited {r.proc.returncode} before it was healthy: {self.tail(r)}")
            if r.health is None:
                return
            try:
                check = subprocess.run(r.health, env=r.env, cwd=self.root, capture_output=True, timeout=20)
            except subprocess.TimeoutExpired:
                check = None
            if check is not None and check.returncode == 0:
                return
            if time.monotonic() > deadline:
                said = check.stdout.decode(errors="replace") + check.stderr.decode(errors="replace") if check else ""
                raise AssertionError(f"{r.service} not healthy in {timeout_s} s ({said[-500:]}): {self.tail(r)}")
            time.sleep(0.5)

    def tail(self, r: Replica, n: int = 3000) -> str:
        return r.log.read_text(errors="replace")[-n:] if r.log.exists() else ""

    def down(self) -> None:
        """SIGTERM every process we started, last first; SIGKILL what is still there after 20 s."""
        for r in reversed(self.running):
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in reversed(self.running):
            try:
                r.proc.wait(20)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(5)

