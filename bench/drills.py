"""``python -m bench.drills``: every fault drill at full size, and the table of what each lost or doubled.

The drills are the fault tests (``tests/test_faults.py``, ``tests/test_crash_drills.py`` and
``tests/test_drills.py``): real mosquitto, redis-server, gateway and worker processes, a fault in the middle
of a run. CI runs them at a small size (``PRIVEDGE_FAST=1``); this command runs them at the size they were
written for and collects the counts each one prints (``[drill] inputs=... results=...``) together with its
outcome, into ``OUT/drills.json`` and ``OUT/drills.md``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.report import header, machine, table_head

REPO = Path(__file__).resolve().parents[1]
DRILL_FILES = ("tests/test_faults.py", "tests/test_crash_drills.py", "tests/test_drills.py", "tests/test_failover.py")
COLUMNS = ("inputs", "results", "unique_results", "missing", "duplicates")
_LINE = re.compile(r"^\[(?P<name>[^\]]+)\] (?P<rest>.*)$")
_PAIR = re.compile(r"(\w+)=(\{[^}]*\}|\[[^\]]*\]|\S+)")


def parse_counts(text: str) -> list[tuple[str, dict]]:
    """Every ``[name] key=value ...`` line of a drill's output, values as Python literals where they are."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        counts = {}
        for key, value in _PAIR.findall(m["rest"]):
            try:
                counts[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                counts[key] = value
        out.append((m["name"], counts))
    return out


def run(out: Path, files: tuple[str, ...] = DRILL_FILES, fast: bool = False, select: str | None = None) -> dict:
    """Run the drill files with pytest (full size unless ``fast``); returns and writes the table."""
    out.mkdir(parents=True, exist_ok=True)
    xml = out / "drills.junit.xml"
    present = [f for f in files if (REPO / f).exists()]
    env = {k: v for k, v in os.environ.items() if k != "PRIVEDGE_FAST"}
    if fast:
        env["PRIVEDGE_FAST"] = "1"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
            "-o", "junit_logging=system-out", *present]
    if select:
        argv += ["-k", select]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env)
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        text = "".join(el.text or "" for el in case.iter("system-out"))
        for name, counts in parse_counts(text) or [(case.get("name"), {})]:
            rows.append({"test": case.get("name"), "drill": name, "outcome": outcome, **counts})
    result = {"machine": machine(), "settings": {"files": present, "full_size": not fast, "select": select},
              "seconds": round(time.monotonic() - t0, 1), "pytest_exit": proc.returncode, "drills": rows}
    (out / "drills.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "drills.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = header("privedge fault drills", r["machine"], r["settings"])
    lines += table_head("drill", "outcome", *COLUMNS, "other counts")
    for row in r["drills"]:
        other = {k: v for k, v in row.items() if k not in ("test", "drill", "outcome", *COLUMNS)}
        cells = [str(row.get(c, "")) for c in COLUMNS]
        lines.append(f"| {row['drill']} | {row['outcome']} | " + " | ".join(cells) + " | "
                     + ", ".join(f"{k}={v}" for k, v in other.items()) + " |")
    lines += ["", "*missing*: inputs without a result; *duplicates*: results published more than once "
              "(a broker restart may redeliver a result the listener had not acknowledged, flagged DUP: "
              "counted in mqtt_dup_flagged).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.drills", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fast", action="store_true", help="the CI size instead of the full size")
    p.add_argument("-k", dest="select", help="only the drills whose test name matches (pytest -k)")
    a = p.parse_args(argv)
    r = run(a.out, fast=a.fast, select=a.select)
    print(markdown(r))
    return r["pytest_exit"]


if __name__ == "__main__":
    sys.exit(main())
