"""Prometheus naming rules for the tests: parse a /metrics text with prometheus_client's own parser and list
what breaks the conventions.

The rules are those of Prometheus's "Metric and label naming" page as its linter (client_golang's promlint,
what ``promtool check metrics`` runs) checks them: help text, snake_case, counters ending in ``_total``,
``_count``/``_sum``/``_bucket`` kept for histograms and summaries, base units (seconds, bytes) spelt out,
no metric type in the name; plus privedge's own: one application prefix, and histograms named for their
unit. promtool is a Go binary we do not ship, hence these few lines.
"""
from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

PREFIXES = ("privedge_", "process_", "python_")
"""The application prefix, and the standard process and interpreter collectors'."""
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
NOT_BASE_UNITS = {"milliseconds", "microseconds", "nanoseconds", "minutes", "hours", "days", "weeks",
                  "kilobytes", "megabytes", "gigabytes", "terabytes", "bits", "percent", "celsius"}
ABBREVIATED_UNITS = {"s", "ms", "us", "ns", "sec", "secs", "b", "kb", "mb", "gb", "tb", "m", "h", "d"}
TYPE_WORDS = {"counter", "gauge", "histogram", "summary"}
RESERVED = ("_count", "_sum", "_bucket", "_total", "_created")
UNIT_SUFFIXES = ("_seconds", "_bytes")


def parse(text: str) -> dict:
    """name -> family, by prometheus_client's parser (which raises on a malformed exposition)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def problems(text: str) -> list[str]:
    """What in the exposition ``text`` breaks the naming conventions (empty when nothing does)."""
    out = []
    families = parse(text)
    for name, family in families.items():
        if name.endswith("_created") and name[:-len("_created")] in families:
            continue  # prometheus_client's creation time of a counter or histogram, in the text format
        words = name.split("_")
        if not SNAKE.match(name):
            out.append(f"{name}: not snake_case")
        if not name.startswith(PREFIXES):
            out.append(f"{name}: no application prefix ({', '.join(PREFIXES)})")
        if not family.documentation:
            out.append(f"{name}: no help text")
        if TYPE_WORDS & set(words):
            out.append(f"{name}: the metric type in its name")
        for w in words:
            if w in NOT_BASE_UNITS:
                out.append(f"{name}: {w} is not a base unit (seconds, bytes, ratio)")
            elif w in ABBREVIATED_UNITS:
                out.append(f"{name}: abbreviated unit {w!r}")
        if name.endswith(RESERVED):
            out.append(f"{name}: a family named with a reserved suffix")
        if family.type == "counter":
            wrong = [s.name for s in family.samples if s.name not in (name + "_total", name + "_created")]
            if wrong:
                out.append(f"{name}: counter samples not ending in _total: {wrong}")
        if family.type in ("histogram", "summary") and not name.endswith(UNIT_SUFFIXES):
            out.append(f"{name}: a {family.type} with no unit suffix {UNIT_SUFFIXES}")
        for s in family.samples:
            for label in s.labels:
                if not SNAKE.match(label):
                    out.append(f"{name}: label {label!r} not snake_case")
            if "name" in s.labels:  # a catch-all family whose label carries the metric's real name
                out.append(f"{name}: a 'name' label standing in for metric names")
                break
    return sorted(set(out))
