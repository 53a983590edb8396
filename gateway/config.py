"""Gateway settings: one frozen, typed dataclass, read once at the entry point (by common.settings, the
loader the worker uses too).

Sources, highest first: command-line flags, ``PRIVEDGE_<FIELD>`` environment variables (e.g.
``PRIVEDGE_BATCH=64``, ``PRIVEDGE_BUNDLES=/a,/b``), a config file (YAML or TOML, flat keys named like the
fields below), then the defaults. Unknown keys in a config file are refused with the list of valid ones.
Only the ``PRIVEDGE_*`` variables that name a field are read: other parts of privedge own other
``PRIVEDGE_*`` variables (``PRIVEDGE_DATA``, ``PRIVEDGE_CACHE``...).

Secrets (the MQTT and Redis passwords) never come from a config file, which tends to end up in a
repository: they come from ``PRIVEDGE_MQTT_PASSWORD`` / ``PRIVEDGE_REDIS_PASSWORD`` or from a file named by
``mqtt_password_file`` / ``redis_password_file`` (flag, environment or config file).

TLS: ``mqtts://`` and ``rediss://`` URLs, each connection with its own CA file and optional client
certificate and key (``mqtt_ca_file``..., ``redis_ca_file``...; common.tls), read when the settings are.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from common.redis_connection import RedisSettings
from common.settings import Keys, SettingsError, check_type, env_names, keys_of, merge
from common.tls import TlsFiles
from models.faces import DETECTORS
from models.runtimes import RUNTIMES
from schemas.errors import BadName
from schemas.names import HA_PREFIX, MAX_SHARDS, check_name, check_prefix

FACE_DETECTORS = (*DETECTORS, "none")
REMOVED = {
    "mode": "the gateway serves split only (features upstream); the benchmark's comparison baselines are "
            "processes of their own: python -m bench.baselines.cloud_home (raw media upstream, with "
            "python -m bench.baselines.cloud_worker) and python -m bench.baselines.local_home (the whole "
            "network at home); privedge bench starts them",
    "overflow": "the gateway no longer drops inputs from a full queue: the MQTT receive window "
                "(receive_maximum) bounds what it holds, and only stale camera frames are dropped "
                "(image_max_age_s)",
    "queue_per_device": "what the gateway holds is bounded by receive_maximum (the broker's in-flight "
                        "window); stale camera frames are dropped by age (image_max_age_s)",
}
"""Settings that older versions had, and what replaces each: naming one is an error that says so."""
SECRET_FIELDS = ("mqtt_password", "redis_password")


ConfigError = SettingsError
"""The settings are invalid: unknown key, wrong type, value out of range, unreadable file (the loader's
error, shared with the worker, under the gateway's older name)."""


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs. Durations carry their unit in the name."""

    broker: str = "mqtt://127.0.0.1:1883"
    """MQTT broker URL, ``mqtt://HOST:PORT``, or ``mqtts://HOST[:PORT]`` (TLS, default port 8883)."""
    redis: str = "redis://127.0.0.1:6379/0"
    """Redis URL, ``redis://[USER[:PASSWORD]@]HOST:PORT[/DB]`` (an ACL user, see README "Security"), or
    ``rediss://`` for TLS."""
    bundles: tuple[str, ...] = ()
    """Bundle directories, at most one per modality (image, speech). Only manifest.json and the extractor
    (extractor.pt, extractor.onnx) are read: a home never needs analyzer.*."""
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
    prefix: str = "privedge"
    """Prefix of every MQTT topic and Redis key."""
    batch: int = 8
    """Largest micro-batch per extraction loop (inputs). ONNX Runtime's per-input cost is the same from 8 to
    64 (``privedge bench``'s runtime ceiling), while its arena keeps the largest batch's intermediate tensors
    for good: 32 held about 20 MiB more than 8 (``python -m bench.footprint``)."""
    wait_ms: float = 1.0
    """Longest wait for a micro-batch to fill once its first input is there (milliseconds). Under load the
    batch fills by itself while the previous one is served; at light load every input waits this long, so
    it is kept short (5 ms added 5 ms to the median at half capacity)."""
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
    mqtt_ca_file: str | None = None
    """``mqtts://``: the CA certificate (PEM) that signed the broker's; None: the system's CAs."""
    mqtt_cert_file: str | None = None
    """``mqtts://``: a client certificate (PEM), for a broker that requires one (``require_certificate``)."""
    mqtt_key_file: str | None = None
    """The private key (PEM) of ``mqtt_cert_file``; None: in the same file."""
    redis_ca_file: str | None = None
    """``rediss://``: the CA certificate (PEM) that signed Redis's; None: the system's CAs."""
    redis_cert_file: str | None = None
    """``rediss://``: a client certificate (PEM), for a Redis with ``tls-auth-clients yes`` (its default)."""
    redis_key_file: str | None = None
    """The private key (PEM) of ``redis_cert_file``; None: in the same file."""
    stream_max_backlog: int = 100_000
    """Entries in one of this gateway's features/media streams above which the cloud is behind: the gateway
    then spools (or holds its inputs) as when Redis is away, until the workers have consumed and trimmed
    the backlog (gateway/upstream.py). Nothing is ever trimmed unread. 100,000 is the bound the stream used
    to be trimmed at: about 20 MB of Redis memory per home for features, 83 minutes of a busy room at
    20 inputs/s without any worker, and far above the acknowledged entries the workers keep for 30 s."""
    shards: int = 1
    """Shards of each task's features (1-100): the gateway spreads its inputs over as many streams per task,
    ``{p}:features:{{task}:{NN}}:{id}`` (schemas.names), by a hash of each input. On a Redis Cluster each
    shard is one hash slot, so more shards spread one task over more masters; every gateway of a deployment
    should use the same number (the workers read whatever shards exist)."""
    redis_wait_replicas: int = 0
    """After each round trip of XADDs, WAIT until this many replicas have them (0: no WAIT). Redis
    replicates asynchronously: a master that fails before its replica has an entry loses it at the
    failover, although the gateway was told it was in. With WAIT a batch counts as in only once that many
    replicas have it within ``redis_wait_timeout_ms``; a shortfall is counted (``wait_short``) and the batch
    resent or spooled as when Redis is away, so the home's inputs wait while a master of its shards has no
    replica (README, "Scaling")."""
    redis_wait_timeout_ms: int = 100
    """Longest WAIT for the replicas of one round trip (milliseconds)."""
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
    pseudonym_period_s: int = 0
    """Rotating device pseudonyms on the wire (gateway/pseudonyms.py): every this many seconds (86400: daily)
    the cloud sees other device ids, boot ids and sequence numbers, mapped back here; 0: off."""
    wire_version: int = 2
    """Wire version of the feature messages sent up (schemas.compact): 2, the compact envelope (at most 64
    bytes per inference for the default bundles), or 1, the self-describing map, for a cloud whose workers
    are older than version 2. Workers read both, so upgrade the workers first, then the gateways."""
    pseudonym_key_file: str | None = None
    """The home's pseudonym key; default ``spool_dir/{id}/pseudonym.key`` (made at first start), or, without
    a spool_dir, a key held in memory (results of inputs sent before a restart are then unmappable)."""
    ha_discovery: bool = True
    """Announce each (device, task) to Home Assistant by MQTT discovery (gateway/homeassistant.py)."""
    ha_prefix: str = HA_PREFIX
    """Home Assistant's discovery prefix (its ``mqtt: discovery_prefix``)."""
    retry_initial_s: float = 0.1
    """First back-off delay when Redis is unreachable (seconds); doubles up to retry_max_s, each delay
    drawn from its upper half (jitter, common.backoff)."""
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

    face_detector: str = "blazeface"
    """What finds the faces in a camera frame before the image extractor (gateway/faces.py): a
    ``models.faces`` backend (``blazeface``: short-range BlazeFace on LiteRT, the one measured best by
    ``bench.face_detectors``; ``haar``, ``dlib_hog``, ``mtcnn``), or ``none``. With a detector each face of
    a frame is cropped as the networks were trained and sent on its own, and a frame without one sends
    nothing up (it gets a ``no_face`` result). ``none`` takes every frame whole, as a face crop. On by
    default: every image bundle privedge trains is trained on face crops (ORL, synthetic faces)."""
    max_faces: int = 8
    """Faces sent per frame at most, the largest first; the others are counted (``faces_over_max``)."""
    min_face_px: int = 32
    """Faces whose box is narrower or shorter than this (frame pixels) are not sent, only counted
    (``faces_skipped_small``): the 64x64 network input of a smaller face is mostly upscaling blur."""
    face_crop_max_px: int = 128
    """A frame no larger than this on both sides is a face crop already and is taken whole, under the
    frame's own id, as before the face stage (ORL's 92x112 photos, the synthetic 64x64 faces): a face
    detector needs a scene around the face, and such a frame is what the networks were trained on.
    0: every frame is searched."""

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
    def mqtt_tls(self) -> TlsFiles:
        return TlsFiles("MQTT", self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)

    @property
    def redis_tls(self) -> TlsFiles:
        return TlsFiles("Redis", self.redis_ca_file, self.redis_cert_file, self.redis_key_file)

    @property
    def client_id(self) -> str:
        """The fixed MQTT client id that makes the broker keep our session."""
        return f"privedge-gateway-{self.id}"

    def replace(self, **changes: Any) -> "GatewaySettings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


KEYS = Keys(types=keys_of(GatewaySettings), env=env_names(keys_of(GatewaySettings)), removed=REMOVED,
            secrets=SECRET_FIELDS, config_env="PRIVEDGE_CONFIG")
"""What a gateway's file, environment and flags may set: every field, each from ``PRIVEDGE_<FIELD>``."""


def _validate(s: GatewaySettings) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    for name, want in KEYS.types.items():
        check_type(name, want, getattr(s, name))
    need(s.runtime in RUNTIMES, f"runtime must be one of {RUNTIMES}, got {s.runtime!r}")
    need(s.face_detector in FACE_DETECTORS,
         f"face_detector must be one of {FACE_DETECTORS}, got {s.face_detector!r}")
    for check, value in ((lambda v: check_name(v, "gateway id"), s.id), (check_prefix, s.prefix),
                         (check_prefix, s.ha_prefix)):
        try:
            check(value)
        except BadName as e:
            raise ConfigError(str(e)) from e
    need(s.mqtt_protocol in ("5", "3.1.1"), f"mqtt_protocol must be '5' or '3.1.1', got {s.mqtt_protocol!r}")
    s.mqtt_tls.check(s.broker)  # the URL's scheme, and the TLS files (read) when it is mqtts://
    RedisSettings.from_dsn(s.redis, ca_file=s.redis_ca_file, cert_file=s.redis_cert_file,
                           key_file=s.redis_key_file)  # one Redis or a Cluster; its TLS files, read
    need(1 <= s.shards <= MAX_SHARDS, f"shards must be 1-{MAX_SHARDS}, got {s.shards}")
    need(s.redis_wait_replicas >= 0 and s.redis_wait_timeout_ms >= 1,
         "redis_wait_replicas must be >= 0 and redis_wait_timeout_ms >= 1")
    for name in ("batch", "audio_max_chunks", "audio_max_bytes", "receive_maximum", "stream_max_backlog",
                 "results_batch", "results_block_ms", "dedupe_size", "audio_max_open", "torch_threads", "keepalive_s",
                 "spool_max_bytes", "spool_replay_batch", "max_faces", "min_face_px"):
        need(getattr(s, name) >= 1, f"{name} must be >= 1, got {getattr(s, name)}")
    need(s.receive_maximum <= 65535, f"receive_maximum must be <= 65535, got {s.receive_maximum}")
    need(s.max_faces <= 100, f"max_faces must be <= 100, got {s.max_faces}")
    for name in ("wait_ms", "session_expiry_s", "retry_initial_s", "face_crop_max_px"):
        need(getattr(s, name) >= 0, f"{name} must be >= 0, got {getattr(s, name)}")
    for name in ("audio_max_seconds", "audio_timeout_s", "image_max_age_s", "stats_interval_s", "retry_max_s",
                 "drain_timeout_s", "connect_timeout_s"):
        need(getattr(s, name) > 0, f"{name} must be > 0, got {getattr(s, name)}")
    need(s.metrics_port is None or 0 <= s.metrics_port <= 65535, f"bad metrics_port {s.metrics_port}")
    need(s.wire_version in (1, 2), f"wire_version must be 1 or 2, got {s.wire_version}")
    need(s.pseudonym_period_s == 0 or s.pseudonym_period_s >= 60,
         f"pseudonym_period_s must be 0 (off) or at least 60, got {s.pseudonym_period_s}")
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


def load_settings(flags: Mapping[str, Any] | None = None, *, config_file: str | Path | None = None,
                  env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Merge flags > ``PRIVEDGE_*`` environment > config file > defaults into validated settings.

    ``flags`` holds only the flags that were given (None values are ignored). ``config_file`` may also
    come from ``PRIVEDGE_CONFIG``. Raises ConfigError on any invalid or unknown setting.
    """
    env = os.environ if env is None else env
    return GatewaySettings(**merge(KEYS, flags, config_file=config_file, env=env))
