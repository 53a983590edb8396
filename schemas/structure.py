"""A bound on msgpack structure (nesting depth, total objects), checked on the bytes before unpacking.

msgpack-python bounds each container's length (``max_array_len``, ``max_map_len``) but neither the depth
nor the total number of objects, so a 4 MiB payload of nested arrays of empty maps makes it allocate
millions of dicts before any field is looked at, and it offers no hook to stop part-way. This walker is
hand-written for that reason: it reads only the type bytes and lengths of the msgpack format (skipping
str/bin/ext bodies without copying them), keeps one counter per open container, and stops at the first
object past ``max_objects`` or the first container past ``max_depth``, having allocated nothing that
grows with the payload beyond that bounded stack. It also finds truncation (a declared length past the
end) and trailing bytes. Only after it passes does :func:`schemas.codec.unpack_map` call msgpack.
"""
from __future__ import annotations

from schemas.errors import Malformed, TooLarge

# type byte -> bytes of the length that follows (str/bin/ext) or of the fixed-size value
_FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
          0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17}
"""Scalars (nil, bools, floats, ints) and fixext (type byte + 1..16 data bytes): bytes after the type."""
_SIZED = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}
"""bin 8/16/32 and str 8/16/32: bytes of the length field; the body follows."""
_EXT = {0xc7: 1, 0xc8: 2, 0xc9: 4}
"""ext 8/16/32: bytes of the length field; a type byte and the body follow."""
_CONTAINER = {0xdc: (2, 1), 0xdd: (4, 1), 0xde: (2, 2), 0xdf: (4, 2)}
"""array 16/32, map 16/32: (bytes of the count, objects per counted item)."""


def check_structure(data: bytes | bytearray | memoryview, max_depth: int, max_objects: int) -> None:
    """Refuse msgpack ``data`` nested deeper than ``max_depth`` containers or holding more than
    ``max_objects`` objects (every scalar, container, map key and value counts one), before any of it
    is unpacked. Raises TooLarge for a bound hit, Malformed for truncated data, trailing bytes or the
    reserved type byte 0xc1. Cost: one step per object up to the bound, none per body byte."""
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    end = len(buf)
    pos = 0
    objects = 0
    stack = [1]  # objects still expected in each open container; the bottom is the top-level object

    def need(n: int) -> None:
        if pos + n > end:
            raise Malformed(f"msgpack truncated at byte {pos}: {n} more bytes declared, {end - pos} left")

    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        need(1)
        t = buf[pos]
        pos += 1
        objects += 1
        if objects > max_objects:
            raise TooLarge(f"msgpack holds more than {max_objects} objects")
        count = -1
        if t <= 0x7f or t >= 0xe0:
            continue                      # positive / negative fixint
        if 0x80 <= t <= 0x8f:
            count = 2 * (t & 0x0f)        # fixmap
        elif 0x90 <= t <= 0x9f:
            count = t & 0x0f              # fixarray
        elif 0xa0 <= t <= 0xbf:
            n = t & 0x1f                  # fixstr
            need(n)
            pos += n
            continue
        elif t in _FIXED:
            need(_FIXED[t])
            pos += _FIXED[t]
            continue
        elif t in _SIZED or t in _EXT:
            w = _SIZED.get(t) or _EXT[t]
            need(w)
            n = int.from_bytes(buf[pos:pos + w], "big") + (1 if t in _EXT else 0)
            pos += w
            need(n)
            pos += n
            continue
        elif t in _CONTAINER:
            w, per = _CONTAINER[t]
            need(w)
            count = per * int.from_bytes(buf[pos:pos + w], "big")
            pos += w
        else:
            raise Malformed(f"msgpack: reserved type byte 0x{t:02x} at byte {pos - 1}")
        if count:
            if len(stack) > max_depth:  # the bottom entry is the top level, not a container
                raise TooLarge(f"msgpack nested deeper than {max_depth} containers")
            if count > end - pos:  # every object takes at least one byte
                raise Malformed(f"msgpack truncated: a container declares {count} objects, "
                                f"{end - pos} bytes left")
            stack.append(count)
    if pos != end:
        raise Malformed(f"msgpack: {end - pos} trailing bytes after the message")
