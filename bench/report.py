"""What every benchmark reports the same way: the machine it ran on, its settings, and markdown table heads.

Each benchmark prints :func:`setup_lines` when it starts and opens its markdown with :func:`header`, so two
reports (``*.json`` and ``*.md``) can be compared on the same terms.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def machine() -> dict:
    """Cores, CPU model, load and versions: what a reader needs to compare two benchmark reports."""
    import onnxruntime
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return {"cores": len(os.sched_getaffinity(0)), "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def setup_lines(machine_info: dict, settings: dict) -> str:
    """The two lines a benchmark prints before measuring: ``machine: {...}`` and ``settings: {...}``."""
    return f"machine: {json.dumps(machine_info)}\nsettings: {json.dumps(settings, sort_keys=True, default=str)}"


def header(title: str, machine_info: dict, settings: dict) -> list[str]:
    """The opening lines of a benchmark's markdown: its title, the machine in words and the settings."""
    m = machine_info
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    return [f"# {title}", "",
            f"Machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}, torch {m['torch']}, "
            f"onnxruntime {m['onnxruntime']}, load average at start {load} ({m['date_utc']}).",
            f"Settings: {json.dumps(settings, sort_keys=True, default=str)}", ""]


def table_head(*columns: str) -> list[str]:
    """A markdown table's column line and its rule."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
