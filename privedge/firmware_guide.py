"""``python -m privedge.firmware_guide [--check]``: render ``docs/firmware.md``, the firmware writer's guide.

The prose is here; every field table comes from the schemas' own ``spec()`` declarations
(:mod:`schemas.reference`) and every topic from :class:`schemas.names.Names`, so the guide cannot drift
from what the gateway decodes. ``--check`` exits 1 when the file in the repository is not what this renders
(the tests run it). The Python example is run by a test exactly as printed here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from string import Template

from schemas import AudioChunk, ImageFrame, Result
from schemas import errors as schema_errors
from schemas.limits import DEFAULT_LIMITS
from schemas.names import Names
from schemas.reference import field_table, payload_bound

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "firmware.md"
DEVICE = "doorcam"

PYTHON_EXAMPLE = '''\
import math, struct, time
import msgpack  # pip install msgpack: the only package this needs

W, H = 64, 64
pixels = bytes((3 * x + 2 * y) % 256 for y in range(H) for x in range(W))  # 8-bit grey, row by row
frame = {"v": 1, "device": "doorcam", "seq": 1, "boot": 4242, "ts": time.time(),
         "codec": "raw", "w": W, "h": H, "ch": 1, "data": pixels}
with open("frame.bin", "wb") as f:
    f.write(msgpack.packb(frame, use_bin_type=True))  # use_bin_type: data goes as bin, not str

rate = 8000  # one second of a 440 Hz tone as one final chunk of 16-bit little-endian samples
samples = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(rate))
chunk = {"v": 1, "device": "doorcam", "seq": 2, "boot": 4242, "ts": time.time(), "utt": "doorcam-4242-1",
         "rate": rate, "width": 2, "channels": 1, "codec": "pcm_s16le", "final": True, "data": samples}
with open("chunk.bin", "wb") as f:
    f.write(msgpack.packb(chunk, use_bin_type=True))
'''

C_SKETCH = '''\
/* ESP32-class camera (ESP-IDF, esp32-camera, mpack): one JPEG frame per call. */
#include <stdlib.h>
#include "esp_camera.h"
#include "mqtt_client.h"
#include "mpack.h"

#define DEVICE_ID    "$device"
#define IMAGE_TOPIC  "$image_topic"
#define STATUS_TOPIC "$status_topic"

static uint64_t seq;      /* increases by one per message */
static uint64_t boot_id;  /* esp_random() once at start: the gateway tells restarts apart by it */

void publish_frame(esp_mqtt_client_handle_t mqtt, double unix_time) {
    camera_fb_t *fb = esp_camera_fb_get();          /* PIXFORMAT_JPEG */
    if (!fb) return;
    char *buf; size_t size; mpack_writer_t w;
    mpack_writer_init_growable(&w, &buf, &size);
    mpack_start_map(&w, 10);
    mpack_write_cstr(&w, "v");      mpack_write_uint(&w, 1);
    mpack_write_cstr(&w, "device"); mpack_write_cstr(&w, DEVICE_ID);
    mpack_write_cstr(&w, "seq");    mpack_write_uint(&w, ++seq);
    mpack_write_cstr(&w, "boot");   mpack_write_uint(&w, boot_id);
    mpack_write_cstr(&w, "ts");     mpack_write_double(&w, unix_time);   /* SNTP-synchronised clock */
    mpack_write_cstr(&w, "codec");  mpack_write_cstr(&w, "jpeg");
    mpack_write_cstr(&w, "w");      mpack_write_uint(&w, fb->width);
    mpack_write_cstr(&w, "h");      mpack_write_uint(&w, fb->height);
    mpack_write_cstr(&w, "ch");     mpack_write_uint(&w, 3);
    mpack_write_cstr(&w, "data");   mpack_write_bin(&w, (const char *)fb->buf, fb->len);
    mpack_finish_map(&w);
    if (mpack_writer_destroy(&w) == mpack_ok) {
        /* QoS 1, not retained; the gateway acknowledges once the frame is handed on */
        esp_mqtt_client_publish(mqtt, IMAGE_TOPIC, buf, (int)size, 1, 0);
        free(buf);
    }
    esp_camera_fb_return(fb);
}

/* At connect: a retained "online"; the last will (set in esp_mqtt_client_config_t) is a retained
 * "offline" on the same topic, published by the broker if the camera drops off. */
void on_connected(esp_mqtt_client_handle_t mqtt) {
    esp_mqtt_client_publish(mqtt, STATUS_TOPIC, "online", 0, 1, 1);
}
'''


def _error_rows() -> str:
    rows = ["| reason | what was wrong |", "|---|---|"]
    for name in sorted(dir(schema_errors)):
        cls = getattr(schema_errors, name)
        if isinstance(cls, type) and issubclass(cls, schema_errors.SchemaError) and cls is not schema_errors.SchemaError:
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            rows.append(f"| `{cls.reason}` | {doc} |")
    return "\n".join(rows)


def render() -> str:
    n = Names()
    lim = DEFAULT_LIMITS
    c_sketch = Template(C_SKETCH).substitute(device=DEVICE, image_topic=n.image(DEVICE),
                                             status_topic=n.status(DEVICE))
    return f"""# Writing firmware for privedge sensors

<!-- Rendered by `python -m privedge.firmware_guide` from the schemas' own declarations; do not edit by
hand: a test renders it again and fails on any difference. -->

A privedge sensor is any MQTT client that publishes msgpack maps to the home's broker. Nothing else of
privedge runs on it. This page is the whole contract: topics, fields, limits, delivery and errors.

## Topics (prefix `{n.prefix}`, device id `{DEVICE}` in the examples)

| topic | direction | payload | QoS | retained |
|---|---|---|---|---|
| `{n.image(DEVICE)}` | camera -> gateway | ImageFrame (msgpack) | 1 | no |
| `{n.audio(DEVICE)}` | microphone -> gateway | AudioChunk (msgpack) | 1 | no |
| `{n.status(DEVICE)}` | sensor -> everyone | `online` / `offline` (also the last will) | 1 | yes |
| `{n.result(DEVICE)}` | gateway -> home apps | Result JSON, one per inference | 1 | no |
| `{n.state(DEVICE, "TASK")}` | gateway -> home apps | the latest Result JSON of each task | 1 | yes |
| `{n.gateway_status("GATEWAY")}` | gateway -> everyone | `online` / `offline` | 1 | yes |
| `{n.gateway_errors("GATEWAY")}` | gateway -> operators | ErrorReport JSON, one per rejected input | 0 | no |

A device id is 1-64 characters of `A-Z a-z 0-9 _ -` (`gateway` is reserved). On a hardened broker a
device logs in with its device id as user name and may publish only under its own id.

## Delivery

- Publish with QoS 1. The gateway acknowledges a message only once it has handed the input on (or
  rejected it with a reason), so a message the broker holds is never lost across a gateway restart.
- `seq` increases by one per message of a device; `boot` is a random number chosen at each start of the
  device, so that a restarted device whose `seq` starts again at 0 is not taken for a duplicate.
- `ts` is the capture time in Unix seconds from a synchronised clock (SNTP). A camera frame older than the
  gateway's `image_max_age_s` (default 30 s) when it can be served is dropped and counted, judged on the
  camera's own clock corrected by its measured offset; audio is never dropped.
- Set a last will of `offline`, retained, on the status topic, and publish a retained `online` on connect.

## ImageFrame (`{n.image(DEVICE)}`, at most {payload_bound(ImageFrame):,} bytes, at most {lim.max_image_pixels:,} pixels)

A msgpack map; keys are the field names below, in any order. `data` must be msgpack **bin**, not str.

{field_table(ImageFrame)}

## AudioChunk (`{n.audio(DEVICE)}`, at most {payload_bound(AudioChunk):,} bytes)

An utterance is a run of chunks with the same `utt`; the last has `final` true. The gateway serves the
utterance when its final chunk arrives.

{field_table(AudioChunk)}

## Result JSON (`{n.result(DEVICE)}` and `{n.state(DEVICE, "TASK")}`)

UTF-8 JSON with the fields of the Result below, and `gateway`, `device`, `seq`, `boot` (read back from
`id`) and `latency_ms` (capture to publication, milliseconds). A camera frame gets one result per face the
gateway found in it, each with `face` (its index, largest face first, also the `#N` at the end of `id`),
`box` and `faces` (`{{"found": N, "answered": M}}`, the frame's summary); a frame without a face gets one
result labelled `no_face` with `faces` alone. Boxes never leave the home: the gateway adds them.

{field_table(Result, type_header="JSON type")}

## Errors

An input the gateway cannot use is acknowledged (so the broker does not send it again) and reported on
`{n.gateway_errors("GATEWAY")}` as JSON with `source`, `device`, `seq`, `topic`, `reason`, `detail` and
`ts`. The schema reasons:

{_error_rows()}

The gateway adds its own: `no model` (no bundle serves that kind of input) and `model failed` (the
extractor raised on this input). A frame too old to serve is not an error: it is dropped and counted (the
gateway's `dropped` metric, by device).

## A client that is not privedge's: Python with plain msgpack, then `mosquitto_pub`

```python
{PYTHON_EXAMPLE}```

```sh
mosquitto_pub -h BROKER -p 1883 -q 1 -t {n.image(DEVICE)} -f frame.bin
mosquitto_pub -h BROKER -p 1883 -q 1 -t {n.audio(DEVICE)} -f chunk.bin
mosquitto_sub -h BROKER -p 1883 -t '{n.result(DEVICE)}' -C 2   # the two results, as JSON
```

(Add `-u {DEVICE} -P PASSWORD --cafile ca.crt -p 8883` on the hardened broker.)

## A C sketch for an ESP32-class camera

```c
{c_sketch}```
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m privedge.firmware_guide", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help=f"exit 1 if {GUIDE.name} differs from what is rendered")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = GUIDE.read_text() if GUIDE.exists() else ""
        if current != text:
            print(f"{GUIDE} is out of date: run python -m privedge.firmware_guide", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(text)
    print(f"wrote {GUIDE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
