"""``privedge sensor camera|mic|frigate``: sensor firmware that publishes to the home broker.

``camera`` reads an image folder, a video file, an RTSP / HTTP stream, the synthetic faces or a live
camera; ``mic`` a WAV folder, the synthetic digits or a live microphone; ``frigate`` bridges a Frigate
NVR's snapshots (``privedge sensor frigate --help``, :mod:`sensors.frigate`).

Exit status: 0 done (or stopped by SIGINT/SIGTERM), 2 bad arguments or source, 3 broker unreachable or
refusing, 4 messages not acknowledged in time.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator

from schemas.errors import SchemaError
from sensors.publisher import ConnectError, PublisherError, SensorPublisher, settings_from_env
from sensors.sources import SourceError, is_live, open_camera, open_microphone

log = logging.getLogger(__name__)

EXIT_OK, EXIT_SOURCE, EXIT_CONNECT, EXIT_PUBLISH = 0, 2, 3, 4


STOP_FLUSH_S = 5.0
"""Seconds a stopped sensor waits for the broker to acknowledge what it sent (then it reports what is missing)."""

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge sensor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("camera", "mic", "frigate"),
                   help="camera sends ImageFrames, mic AudioChunks; frigate bridges Frigate's snapshots")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT (mqtts:// for TLS)")
    p.add_argument("--device", required=True, help="device id, [A-Za-z0-9_-]{1,64}")
    p.add_argument("--source", required=True,
                   help="image folder or video file or rtsp:// / http:// stream URL (camera), WAV folder "
                        "(mic), 'synthetic', or 'live[:INDEX]'")
    p.add_argument("--rate", type=float, default=1.0,
                   help="frames (camera) or utterances (mic) per second; a video or stream is sampled at "
                        "this rate of its own clock; 0 = every frame, as fast as the broker acks")
    p.add_argument("--count", type=int, default=None, help="stop after N frames / utterances")
    p.add_argument("--prefix", default="privedge", help="topic prefix (default privedge)")
    p.add_argument("--codec", choices=("png", "jpeg", "raw"), default="png", help="camera frame codec")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="mic chunk length, milliseconds")
    p.add_argument("--utt-seconds", type=float, default=1.0, help="live mic: utterance length, seconds")
    p.add_argument("--loop", action="store_true", help="repeat a folder or synthetic source forever")
    p.add_argument("--max-inflight", type=int, default=20, help="unacknowledged messages allowed")
    p.add_argument("--ca-file", help="mqtts://: CA certificate that signed the broker's (PEM; default: the system's, "
                                     "or PRIVEDGE_MQTT_CA_FILE)")
    p.add_argument("--cert-file", help="mqtts://: this device's client certificate (PEM; PRIVEDGE_MQTT_CERT_FILE)")
    p.add_argument("--key-file", help="mqtts://: its private key (PEM; PRIVEDGE_MQTT_KEY_FILE)")
    p.add_argument("--log-level", default="INFO")
    return p


def _items(args: argparse.Namespace) -> Iterator:
    if args.kind == "camera":
        return open_camera(args.source, loop=args.loop, rate=args.rate)
    return open_microphone(args.source, loop=args.loop, seconds=args.utt_seconds)


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    """Publish from the source until it ends, ``--count`` is reached or ``stop`` is set."""
    try:
        items = _items(args)
        settings = settings_from_env(args.broker, args.device, prefix=args.prefix, max_inflight=args.max_inflight,
                                     ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
    except (SourceError, ValueError) as e:
        print(f"privedge sensor: {e}", file=sys.stderr)
        return EXIT_SOURCE
    publisher = SensorPublisher(settings)
    try:
        publisher.connect()
    except ConnectError as e:
        print(f"privedge sensor: {e}", file=sys.stderr)
        return EXIT_CONNECT
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    pace = is_live(args.source)  # a live source is already real time
    done, t_next = 0, time.monotonic()
    status = EXIT_OK
    try:
        while not stop.is_set() and (args.count is None or done < args.count):
            try:
                item = next(items)
            except StopIteration:
                break
            if args.kind == "camera":
                publisher.publish_image(item, codec=args.codec)
            else:
                wave, rate = item
                publisher.publish_utterance(wave, rate, chunk_ms=args.chunk_ms)
            done += 1
            if period and not pace:
                t_next += period
                stop.wait(max(0.0, t_next - time.monotonic()))
        # Asked to stop (SIGTERM from a supervisor that kills after a grace period): wait a bounded time for the
        # broker's acknowledgements, and say so if some are missing, rather than be killed mid-wait.
        publisher.flush(STOP_FLUSH_S if stop.is_set() else None)
    except SourceError as e:
        print(f"privedge sensor: {e}", file=sys.stderr)
        status = EXIT_SOURCE
    except (SchemaError, PublisherError) as e:
        print(f"privedge sensor: {e}", file=sys.stderr)
        status = EXIT_PUBLISH
    finally:
        publisher.close(timeout_s=2.0 if stop.is_set() else 5.0)
    log.info("%s %s: %d %s, %d messages, %d bytes acknowledged", args.kind, args.device, done,
             "frames" if args.kind == "camera" else "utterances", publisher.sent, publisher.bytes_sent)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["frigate"]:
        from sensors import frigate  # its own options: no --device or --source
        return frigate.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.kind == "frigate":
        print("privedge sensor: frigate takes its own options: privedge sensor frigate --broker URL ...",
              file=sys.stderr)
        return EXIT_SOURCE
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            # From another thread: stop.set() in the handler itself can deadlock on the lock that the main
            # thread's stop.wait() holds at that moment (the process then hangs until SIGKILL).
            previous[sig] = signal.signal(
                sig, lambda signum, frame: threading.Thread(target=stop.set, daemon=True).start())
    try:
        return run(args, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
