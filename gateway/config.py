"""Gateway settings: one frozen, typed dataclass, read once at the entry point.

Sources, highest first: command-line flags, ``PRIVEDGE_<FIELD>`` environment variables (e.g.
``PRIVEDGE_BATCH=64``, ``PRIVEDGE_BUNDLES=/a,/b``), a config file (YAML or TOML, flat keys named like the
fields below), then the defaults. Unknown keys in a config file are refused with the list of valid ones.
Only the ``PRIVEDGE_*`` variables that name a field are read: other parts of privedge own other
``PRIVEDGE_*`` variables (``PRIVEDGE_DATA``, ``PRIVEDGE_CACHE``...).

Secrets (the MQTT and Redis passwords) never come from a config file, which tends to end up in a
repository: they come from ``PRIVEDGE_MQTT_PASSWORD`` / ``PRIVEDGE_REDIS_PASSWORD`` or from a file named by
``mqtt_password_file`` / ``redis_password_file`` (flag, environment or config file).
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import yaml

from models.runtimes import RUNTIMES
from schemas.errors import BadName
from schemas.names import check_name, check_prefix

MODES = ("split", "cloud_only", "local_only")
REMOVED = {
    "overflow": "the gateway no longer drops inputs from a full queue: the MQTT receive window "
                "(receive_maximum) bounds what it holds, and only stale camera frames are dropped "
                "(image_max_age_s)",
    "queue_per_device": "what the gateway holds is bounded by receive_maximum (the broker's in-flight "
                        "window); stale camera frames are dropped by age (image_max_age_s)",
}
"""Settings that older versions had, and what replaces each: naming one is an error that says so."""
SECRET_FIELDS = ("mqtt_password", "redis_password")


class ConfigError(ValueError):
    """The settings are invalid: unknown key, wrong type, value out of range, unreadable file."""


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs. Durations carry their unit in the name."""

    broker: str = "mqtt://127.0.0.1:1883"
    """MQTT broker URL, ``mqtt://HOST:PORT``."""
    redis: str = "redis://127.0.0.1:6379/0"
    """Redis URL, ``redis://[USER[:PASSWORD]@]HOST:PORT[/DB]`` (an ACL user, see README "Security");
    unused in local_only mode."""
    bundles: tuple[str, ...] = ()
    """Bundle directories, at most one per modality (image, speech). Only manifest.json and extractor.pt
    are read in split mode, only manifest.json in cloud_only mode, the whole model in local_only mode."""
    bundle_key: str | None = field(default_factory=lambda: os.environ.get("PRIVEDGE_BUNDLE_KEY") or None)
    """The provider's public key file (``privedge bundle keygen`` writes it as KEY.pub): every bundle must
    carry the provider's signature over all its files, checked at start (see models/signing.py). Default
    ``PRIVEDGE_BUNDLE_KEY``, also for settings built in code, so that one variable pins the key for every
    service a home runs. None and not allow_unsigned: the gateway refuses to start."""
    allow_unsigned: bool = False
    """Load bundles that are unsigned, wrongly signed, or unverifiable for want of bundle_key, with a
    warning instead of refusing to start. Gives up the provider's authentication of the models (see
    README "Security"); for development only."""
    id: str = "home"
    """Gateway name: MQTT client id ``privedge-gateway-{id}``, results stream, status/errors topics."""
    mode: str = "split"
    """``split`` (features upstream), ``cloud_only`` (raw media upstream), ``local_only`` (nothing up)."""
    prefix: str = "privedge"
    """Prefix of every MQTT topic and Redis key."""
    batch: int = 32
    """Largest micro-batch per extraction loop (inputs)."""
    wait_ms: float = 5.0
    """Longest wait for a micro-batch to fill once its first input is there (milliseconds)."""
    receive_maximum: int = 1000
    """MQTT 5 Receive Maximum: unacknowledged messages the broker may have in flight to us, and so the
    bound of what the gateway holds (queued, being assembled, waiting for Redis); the broker keeps the
    rest (with MQTT 3.1.1 the broker's ``max_inflight_messages`` is that bound). Memory: at most this many
    payloads (each under its size limit). Nothing is dropped to stay under it."""
    image_max_age_s: float = 30.0
    """A camera frame older than this when the gateway takes it (seconds since capture, on the camera's
    own clock corrected by its measured offset) is dropped, acknowledged and counted per device
    (``dropped``): under sustained overload old frames are worth nothing and the newest are served. A
    backlog shorter than this (a broker or gateway restart) is served in full. Audio is never dropped."""
    mqtt_protocol: str = "5"
    """``5`` (session expiry + receive maximum) or ``3.1.1`` (clean_session False)."""
    session_expiry_s: int = 7 * 24 * 3600
    """How long the broker keeps our session and queued messages while we are away (seconds, MQTT 5)."""
    keepalive_s: int = 30
    """MQTT keep-alive (seconds)."""
    connect_timeout_s: float = 30.0
    """How long start() waits for the first successful CONNACK (seconds)."""
    mqtt_username: str | None = None
    """MQTT user name; None for anonymous."""
    mqtt_password: str | None = field(default=None, repr=False)
    """MQTT password (secret: environment or mqtt_password_file only)."""
    mqtt_password_file: str | None = None
    """File holding the MQTT password (first line)."""
    redis_password: str | None = field(default=None, repr=False)
    """Redis password (secret: environment or redis_password_file only)."""
    redis_password_file: str | None = None
    """File holding the Redis password (first line)."""
    stream_max_backlog: int = 100_000
    """Entries in one of this gateway's features/media streams above which the cloud is behind: the gateway
    then spools (or holds its inputs) as when Redis is away, until the workers have consumed and trimmed
    the backlog (gateway/upstream.py). Nothing is ever trimmed unread. 100,000 is the bound the stream used
    to be trimmed at: about 20 MB of Redis memory per home for features, 83 minutes of a busy room at
    20 inputs/s without any worker, and far above the acknowledged entries the workers keep for 30 s."""
    results_batch: int = 256
    """Results read per XREAD."""
    results_block_ms: int = 500
    """XREAD BLOCK on the results stream (milliseconds); also how fast the loop notices stop()."""
    dedupe_size: int = 100_000
    """Result ids remembered to drop duplicates (LRU, entries)."""
    audio_max_seconds: float = 10.0
    """Longest utterance accepted (seconds of audio); longer ones are rejected."""
    audio_max_open: int = 64
    """Utterances being assembled at once; past this the oldest one of the device holding the most is
    rejected."""
    audio_max_chunks: int = 256
    """Chunks of one utterance, empty ones included (10 s in 40 ms chunks); past this it is rejected."""
    audio_max_bytes: int = 2 * 1024 * 1024
    """Payload bytes of one utterance's chunks, headers included (10 s of 48 kHz stereo is 1.9 MB); past
    this it is rejected."""
    audio_timeout_s: float = 5.0
    """An utterance whose final chunk has not come this long after its last chunk is rejected."""
    torch_threads: int = 1
    """torch intra-op threads, set process-wide at start(), and the ONNX Runtime session's threads (a
    gateway and workers share the cores: one busy thread per process)."""
    runtime: str = "auto"
    """What runs the network: ``onnx`` (ONNX Runtime; the bundle must carry the .onnx file), ``torch``
    (the reference), ``auto`` (ONNX when the bundle carries it, else torch)."""
    warm_up: bool = True
    """Run a dummy extraction (the runtime, the speech front end) before subscribing."""
    stats_interval_s: float = 5.0
    """Period of the JSON stats on ``{prefix}/gateway/{id}/stats`` (seconds)."""
    metrics_port: int | None = None
    """Port of the Prometheus endpoint; None: no endpoint."""
    metrics_host: str = "127.0.0.1"
    """Address the Prometheus endpoint binds to."""
    retry_initial_s: float = 0.1
    """First back-off delay when Redis is unreachable (seconds); doubles up to retry_max_s."""
    retry_max_s: float = 5.0
    """Largest back-off delay (seconds)."""
    drain_timeout_s: float = 30.0
    """On stop(): how long to keep draining held inputs upstream before giving up (seconds)."""
    spool_dir: str | None = None
    """Directory of the on-disk spool (the gateway uses ``spool_dir/{id}``): while Redis is unreachable,
    feature messages are written there (and their MQTT inputs acknowledged), then replayed in order; the
    results cursor is kept there too.
    None: no spool; inputs are held unacknowledged (up to receive_maximum) until Redis answers."""
    spool_max_bytes: int = 256 * 1024 * 1024
    """Bound of the spool on disk (bytes). A full spool drops nothing (what it holds was acknowledged): it
    refuses the next batch, whose inputs then wait unacknowledged at the broker until the replay makes room
    (counted in ``spool_full``)."""
    spool_fsync: bool = True
    """fsync each spooled batch before acknowledging its inputs (survives a power cut, not only a crash)."""
    spool_replay_batch: int = 256
    """Spooled messages handed on per pipelined round trip when Redis is back."""

    pitch_shift: str | None = None
    """This home's secret pitch-shift range for speech, ``"LO,HI"`` semitones (0 <= LO <= HI <= 12; the
    sign is random per utterance). It replaces the bundle's range at the extractor and is never sent; the
    analyzer does not need to know it, but was trained on the bundle's range: a range inside that one
    keeps the accuracy, one outside it costs some (``python -m bench.pitch_secret`` measures both, and
    what the secret hides from an attacker). None: the bundle's range."""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def pitch_shift_range(self) -> tuple[float, float] | None:
        """``pitch_shift`` parsed, or None."""
        return None if self.pitch_shift is None else parse_pitch_shift(self.pitch_shift)

    @property
    def client_id(self) -> str:
        """The fixed MQTT client id that makes the broker keep our session."""
        return f"privedge-gateway-{self.id}"

    def replace(self, **changes: Any) -> "GatewaySettings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in fields(GatewaySettings)}


def _validate(s: GatewaySettings) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    for f in fields(s):
        _check_type(f.name, getattr(s, f.name))
    need(s.mode in MODES, f"mode must be one of {MODES}, got {s.mode!r}")
    need(s.runtime in RUNTIMES, f"runtime must be one of {RUNTIMES}, got {s.runtime!r}")
    for check, value in ((lambda v: check_name(v, "gateway id"), s.id), (check_prefix, s.prefix)):
        try:
            check(value)
        except BadName as e:
            raise ConfigError(str(e)) from e
    need(s.mqtt_protocol in ("5", "3.1.1"), f"mqtt_protocol must be '5' or '3.1.1', got {s.mqtt_protocol!r}")
    url = urlparse(s.broker)
    need(url.scheme == "mqtt" and bool(url.hostname), f"broker must be mqtt://HOST:PORT, got {s.broker!r}")
    need(urlparse(s.redis).scheme in ("redis", "rediss"), f"redis must be redis://HOST:PORT, got {s.redis!r}")
    for name in ("batch", "audio_max_chunks", "audio_max_bytes", "receive_maximum", "stream_max_backlog",
                 "results_batch", "results_block_ms", "dedupe_size", "audio_max_open", "torch_threads", "keepalive_s",
                 "spool_max_bytes", "spool_replay_batch"):
        need(getattr(s, name) >= 1, f"{name} must be >= 1, got {getattr(s, name)}")
    need(s.receive_maximum <= 65535, f"receive_maximum must be <= 65535, got {s.receive_maximum}")
    for name in ("wait_ms", "session_expiry_s", "retry_initial_s"):
        need(getattr(s, name) >= 0, f"{name} must be >= 0, got {getattr(s, name)}")
    for name in ("audio_max_seconds", "audio_timeout_s", "image_max_age_s", "stats_interval_s", "retry_max_s",
                 "drain_timeout_s", "connect_timeout_s"):
        need(getattr(s, name) > 0, f"{name} must be > 0, got {getattr(s, name)}")
    need(s.metrics_port is None or 0 <= s.metrics_port <= 65535, f"bad metrics_port {s.metrics_port}")
    if s.pitch_shift is not None:
        parse_pitch_shift(s.pitch_shift)


def parse_pitch_shift(text: str) -> tuple[float, float]:
    """``"LO,HI"`` -> (lo, hi) semitones with 0 <= lo <= hi <= 12; ConfigError otherwise."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"pitch_shift must be 'LO,HI' semitones, got {text!r}") from None
    if not 0 <= lo <= hi <= 12:
        raise ConfigError(f"pitch_shift must satisfy 0 <= LO <= HI <= 12, got {text!r}")
    return (lo, hi)


def _check_type(name: str, value: Any) -> None:
    want = _FIELDS[name].type
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str | None": value is None or isinstance(value, str),
        "int | None": value is None or (isinstance(value, int) and not isinstance(value, bool)),
        "tuple[str, ...]": isinstance(value, tuple) and all(isinstance(v, str) for v in value),
    }[want]
    if not ok:
        raise ConfigError(f"{name} must be {want}, got {type(value).__name__} {value!r}")


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a value from a file, the environment or a flag into the field's type."""
    if name in REMOVED:
        raise ConfigError(f"{source}: setting {name!r} was removed: {REMOVED[name]}")
    if name not in _FIELDS:
        raise ConfigError(f"{source}: unknown setting {name!r}; valid settings: {', '.join(sorted(_FIELDS))}")
    want = _FIELDS[name].type
    try:
        if want == "tuple[str, ...]":
            if isinstance(value, str):
                return tuple(v for v in value.split(",") if v)
            if isinstance(value, (list, tuple)):
                return tuple(str(v) for v in value)
        elif want in ("int", "int | None") and isinstance(value, str):
            return None if want == "int | None" and value.lower() in ("", "none") else int(value)
        elif want == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        elif want == "bool" and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        elif want in ("str", "str | None") and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. mqtt_protocol: 5 in YAML
    except ValueError as e:
        raise ConfigError(f"{source}: {name} must be {want}, got {value!r}") from e
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML (.yaml/.yml) or TOML (.toml) mapping of setting names to values."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    for secret in SECRET_FIELDS:
        if secret in data:
            raise ConfigError(f"config file {path}: {secret} is a secret; set PRIVEDGE_{secret.upper()} or "
                              f"{secret}_file instead")
    return {k: _coerce(str(k), v, f"config file {path}") for k, v in data.items()}


def _read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as e:
        raise ConfigError(f"cannot read {what} from {path}: {e}") from e


def load_settings(flags: Mapping[str, Any] | None = None, *, config_file: str | Path | None = None,
                  env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Merge flags > ``PRIVEDGE_*`` environment > config file > defaults into validated settings.

    ``flags`` holds only the flags that were given (None values are ignored). ``config_file`` may also
    come from ``PRIVEDGE_CONFIG``. Raises ConfigError on any invalid or unknown setting.
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    config_file = config_file or env.get("PRIVEDGE_CONFIG")
    if config_file:
        merged.update(read_config_file(config_file))
    for name in (*REMOVED, *_FIELDS):
        key = f"PRIVEDGE_{name.upper()}"
        if key in env:
            merged[name] = _coerce(name, env[key], f"environment {key}")
    for name, value in (flags or {}).items():
        if value is not None:
            merged[name] = _coerce(name, value, f"flag --{name.replace('_', '-')}")
    for secret in SECRET_FIELDS:
        path = merged.get(f"{secret}_file")
        if path and not merged.get(secret):
            merged[secret] = _read_secret_file(path, secret)
    return GatewaySettings(**merged)
