"""Child processes that the demo starts and must always end: its own session, a log file, a stop with a
deadline and SIGKILL after it, and (Linux) a parent-death signal so that a killed demo leaves no orphan."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Child:
    """One command run as a child process; ``stop()`` ends it (SIGTERM, then SIGKILL after ``timeout``).

    It runs in a session of its own, so that a Ctrl-C in the terminal reaches only the demo, which then
    stops its children in order (sensors first, so that every input they sent can still be answered).
    """

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, env: dict | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> "Child":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        log.info("started %s (pid %s): %s", self.name, self.proc.pid, " ".join(self.argv))
        return self

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` unless it has ended."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; the exit status or None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent; returns the exit status.

        Before the SIGKILL, SIGUSR1 asks the child (a ``privedge`` command, see privedge/cli.py) to print every
        thread's stack into its log, so that the reason it did not stop is there to read."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        if self.wait(timeout) is None:
            log.warning("%s (pid %s) still running %.0f s after SIGTERM: its stacks go to %s, then it is killed",
                        self.name, self.pid, timeout, self.log_path)
            self.signal(signal.SIGUSR1)
            self.wait(1.0)
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def tail(self, nbytes: int = 2000) -> str:
        """The end of its log (for error messages and progress)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""
