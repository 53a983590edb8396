"""The fuzzing run of ``bench.fuzz`` at CI size: hostile inputs of every family through a running gateway
and worker (real processes, shipped defaults); neither may exit, and no loop may stop answering.

The full run (100,000 inputs) is ``python -m bench.fuzz --out DIR``; this one sends a small share of it,
enough for every family and every kind of mutation to occur several times.
"""
from __future__ import annotations

import pytest

from bench import fuzz

pytestmark = pytest.mark.integration


def test_hostile_inputs_neither_crash_nor_stick_the_services(tmp_path):
    r = fuzz.run(1500, tmp_path / "out", seed=1, work=tmp_path / "work")
    assert r["crashes"] == 0, r["crashed"]
    assert r["stuck_loops"] == 0, r["probes"]
    assert sum(r["sent"].values()) == r["inputs"] >= 1500 - len(fuzz.SHARES)
    # The hostile inputs were seen and refused, not silently ignored.
    assert sum(r["gateway_rejected"].values()) > 0.5 * (r["sent"]["image"] + r["sent"]["bytes"]), r
    assert r["worker_dead_letters_total"] > 0.5 * r["sent"]["features"], r
    assert (tmp_path / "out" / "fuzz.json").exists() and (tmp_path / "out" / "fuzz.md").exists()
