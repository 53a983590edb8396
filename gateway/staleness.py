"""When a camera frame is stale: its age on the camera's own clock, corrected by that clock's offset.

Sensor clocks are not ours: a camera whose clock runs an hour behind sends frames whose ``ts`` looks an
hour old on arrival. So the gateway measures each device's offset as the smallest ``arrival - ts`` it
has seen (the transit time of the fastest frame plus the clock's offset) and judges a frame's age as
``now - ts - offset``: a skewed clock shifts both terms alike and is not "stale", while a frame that
waited (in the broker's queue, in ours) ages by exactly the time it waited.

The minimum is kept over a sliding window of two buckets of ``window_s`` each, so a clock that is set
back (NTP) is forgotten after at most ``2 * window_s``. A backlog seen right after the gateway starts
sets the offset high (its frames all arrived late), which errs towards serving them, never towards
dropping. Under sustained overload the window still holds the offsets measured before it began, so frames
that waited longer than the bound are found stale: that wait is the definition of sustained overload.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Offset:
    bucket: int           # index of the current bucket (wall seconds // window_s)
    current: float        # smallest arrival - ts in the current bucket, seconds
    previous: float       # smallest in the bucket before it, seconds


class DeviceClocks:
    """Per-device clock offsets, for bounded memory (``max_devices``, least recently seen forgotten)."""

    def __init__(self, window_s: float = 300.0, max_devices: int = 10_000) -> None:
        self.window_s = window_s
        self.max_devices = max_devices
        self._offsets: OrderedDict[str, _Offset] = OrderedDict()

    def age(self, device: str, ts: float, arrived: float, now: float) -> float:
        """Seconds the frame captured at ``ts`` (device clock) has waited since it was sent, judged at
        ``now``; ``arrived`` is when it reached the gateway. All Unix seconds (``ts`` on the device's
        clock, the others on ours). Records the frame's transit for the device's offset."""
        transit = arrived - ts
        bucket = int(arrived // self.window_s)
        o = self._offsets.get(device)
        if o is None:
            o = self._offsets[device] = _Offset(bucket, transit, transit)
            while len(self._offsets) > self.max_devices:
                self._offsets.popitem(last=False)
        else:
            self._offsets.move_to_end(device)
            if bucket != o.bucket:
                o.previous = o.current if bucket == o.bucket + 1 else transit
                o.bucket, o.current = bucket, transit
            o.current = min(o.current, transit)
        return (now - ts) - min(o.current, o.previous)
