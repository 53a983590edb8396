"""The services under test as child processes (``privedge gateway``, ``privedge worker``, or a baseline's
``python -m bench.baselines...``), with the readings a benchmark takes of them: CPU seconds (utime + stime) and peak resident memory (VmHWM)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def privedge_command() -> list[str]:
    """The ``privedge`` console script of this interpreter's environment, else ``python -m privedge.cli``."""
    script = Path(sys.executable).parent / "privedge"
    if script.exists():
        return [str(script)]
    found = shutil.which("privedge")
    return [found] if found else [sys.executable, "-m", "privedge.cli"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (its own threads, not its children), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of proc(5), after "pid (comm)"


def peak_rss_mb(pid: int) -> float:
    """VmHWM of process ``pid``: the most resident memory it has held, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class Service:
    """One ``privedge SUBCOMMAND ...`` child process (or ``python -m MODULE ...`` when ``module`` is
    given: a baseline standing in for that service), its output in ``log_path``."""

    def __init__(self, subcommand: str, args: list[str], log_path: Path, module: str | None = None) -> None:
        self.name = subcommand
        head = [sys.executable, "-m", module] if module else [*privedge_command(), subcommand]
        self.argv = [*head, *args]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        log.debug("started %s (pid %s)", " ".join(self.argv), self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the services drain and exit), SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, n: int = 20) -> str:
        """The last ``n`` lines of its output (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
