"""Field tables of the wire messages, made from their own ``spec()`` declarations.

The firmware writer's guide (``docs/firmware.md``, rendered by ``python -m privedge.firmware_guide``) takes
its tables from here, so the document cannot say something the decoder does not do: a test renders the
guide again and compares.
"""
from __future__ import annotations

from schemas.codec import Message
from schemas.limits import DEFAULT_LIMITS, Limits

MSGPACK_TYPES = {"int": "int", "float": "float (or int)", "bool": "bool", "str": "str (UTF-8)", "bytes": "bin",
                 "shape": "array of int", "scores": "map str -> float"}


def _bound(f, limits: Limits) -> str:
    s = f.spec
    parts = []
    if s.choices:
        parts.append("one of " + ", ".join(f"`{c}`" for c in s.choices))
    if s.lo is not None and s.hi is not None:
        parts.append(f"{_num(s.lo)} .. {_num(s.hi)}")
    elif s.lo is not None:
        parts.append(f">= {_num(s.lo)}")
    elif s.hi is not None:
        parts.append(f"<= {_num(s.hi)}")
    bound = s.max_len
    if isinstance(bound, str):
        bound = getattr(limits, bound)
    if bound is None and f.kind == "str":
        bound = limits.max_str
    if bound is not None:
        unit = {"bytes": "bytes", "str": "characters"}.get(f.kind, "items")
        parts.append(f"at most {bound:,} {unit}")
    return "; ".join(parts) or "-"


def _num(x: float) -> str:
    if x == 2**63 - 1:
        return "2^63-1"
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def field_table(cls: type[Message], limits: Limits = DEFAULT_LIMITS, type_header: str = "msgpack type") -> str:
    """A markdown table of ``cls``'s wire fields: name, type, required, meaning, allowed values."""
    rows = [f"| field | {type_header} | required | meaning | allowed |", "|---|---|---|---|---|",
            f"| `v` | int | yes | wire version | `{cls.VERSION}` |"]
    for f in cls.wire_fields():
        kind = MSGPACK_TYPES.get(f.kind, f.kind) + (" or nil" if f.optional else "")
        rows.append(f"| `{f.name}` | {kind} | {'yes' if f.required else 'no'} | {f.spec.doc} | "
                    f"{_bound(f, limits)} |")
    return "\n".join(rows)


def payload_bound(cls: type[Message], limits: Limits = DEFAULT_LIMITS) -> int:
    """Largest encoded message ``cls`` may be (bytes), checked before it is unpacked."""
    return int(getattr(limits, cls.PAYLOAD_LIMIT))
