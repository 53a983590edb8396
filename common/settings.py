"""Settings loading for both services: a config file, the environment, then flags, over the defaults of a
frozen settings dataclass; unknown keys refused with the list of valid ones.

Sources, highest first: command-line flags (only those given), environment variables (each key's own
variable, ``PRIVEDGE_<KEY>`` unless a service names another), a config file (YAML ``.yaml``/``.yml`` or
TOML ``.toml``, flat keys), then the dataclass defaults. A service describes what it accepts in one
:class:`Keys` (key -> type, key -> variable, removed keys, secrets) and gets back a mapping of typed
values, which it passes to its own dataclass (whose ``__post_init__`` validates ranges and choices).

Secrets never come from a config file, which tends to end up in a repository: they come from their
environment variable or from the file named by ``<secret>_file`` (flag, environment or config file).

Hand-written rather than pydantic-settings: the settings are plain frozen dataclasses validated in
``__post_init__`` (built in code by tests and benchmarks too), pydantic is no dependency of privedge,
and the whole loader is these few functions over a handful of field types.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


class SettingsError(ValueError):
    """The settings are invalid: unknown key, wrong type, value out of range, unreadable file."""


TYPES = ("str", "int", "float", "bool", "str | None", "int | None", "tuple[str, ...]", "tuple[Path, ...]")
"""The field types a setting may have (annotations as written, ``from __future__ import annotations``)."""


@dataclass(frozen=True)
class Keys:
    """What one service's settings accept."""

    types: Mapping[str, str]
    """Key -> its type, one of :data:`TYPES`."""
    env: Mapping[str, str]
    """Key -> the environment variable read for it; a key without one is not read from the environment."""
    removed: Mapping[str, str] = field(default_factory=dict)
    """Keys older versions had -> what replaces each: naming one is an error that says so."""
    secrets: tuple[str, ...] = ()
    """Keys never read from a config file; ``<secret>_file`` (a key too) names a file holding the value."""
    config_env: str | None = None
    """The environment variable that may name the config file; None: only the ``config_file`` argument."""


def keys_of(settings_cls: type, **types: str) -> dict[str, str]:
    """Key -> type for every field of the dataclass ``settings_cls``; ``types`` overrides or adds keys
    (e.g. a field built from a URL string)."""
    out = {f.name: f.type for f in dataclasses.fields(settings_cls)}
    out.update(types)
    for name, want in out.items():
        if want not in TYPES:
            raise TypeError(f"setting {name}: unsupported type {want!r}")
    return out


def env_names(keys: Mapping[str, str] | list[str], prefix: str = "PRIVEDGE_") -> dict[str, str]:
    """Key -> ``{prefix}{KEY}``, the usual environment variable of each key."""
    return {name: f"{prefix}{name.upper()}" for name in keys}


def check_type(name: str, want: str, value: Any) -> None:
    """Raise SettingsError unless ``value`` is of the setting type ``want``."""
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str | None": value is None or isinstance(value, str),
        "int | None": value is None or (isinstance(value, int) and not isinstance(value, bool)),
        "tuple[str, ...]": isinstance(value, tuple) and all(isinstance(v, str) for v in value),
        "tuple[Path, ...]": isinstance(value, tuple) and all(isinstance(v, (str, Path)) for v in value),
    }[want]
    if not ok:
        raise SettingsError(f"{name} must be {want}, got {type(value).__name__} {value!r}")


def coerce(keys: Keys, name: str, value: Any, source: str) -> Any:
    """Turn a value from a file, the environment or a flag into the key's type; SettingsError naming
    ``source`` and the key when the key is unknown or removed or the value does not convert."""
    if name in keys.removed:
        raise SettingsError(f"{source}: setting {name!r} was removed: {keys.removed[name]}")
    if name not in keys.types:
        raise SettingsError(f"{source}: unknown setting {name!r}; valid settings: {', '.join(sorted(keys.types))}")
    want = keys.types[name]
    try:
        if want in ("tuple[str, ...]", "tuple[Path, ...]"):
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
        raise SettingsError(f"{source}: {name} must be {want}, got {value!r}") from e
    return value


def read_config_file(keys: Keys, path: str | Path) -> dict[str, Any]:
    """Read a flat YAML (.yaml/.yml) or TOML (.toml) mapping of setting names to typed values."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"cannot read config file {path}: {e}") from e
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise SettingsError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                            f"{e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    for secret in keys.secrets:
        if secret in data:
            hint = f"set {keys.env[secret]} or " if secret in keys.env else "set "
            raise SettingsError(f"config file {path}: {secret} is a secret; {hint}{secret}_file instead")
    return {k: coerce(keys, str(k), v, f"config file {path}") for k, v in data.items()}


def _read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as e:
        raise SettingsError(f"cannot read {what} from {path}: {e}") from e


def merge(keys: Keys, flags: Mapping[str, Any] | None = None, *, config_file: str | Path | None = None,
          env: Mapping[str, str]) -> dict[str, Any]:
    """flags > environment > config file, as typed values (the defaults are the dataclass's own).

    ``flags`` holds the flags that were given (None values are ignored); ``config_file`` may also come
    from the ``keys.config_env`` variable. A secret given as ``<secret>_file`` is read from that file's
    first line. Raises SettingsError on an unknown, removed or mistyped key.
    """
    merged: dict[str, Any] = {}
    config_file = config_file or (env.get(keys.config_env) if keys.config_env else None)
    if config_file:
        merged.update(read_config_file(keys, config_file))
    for name, variable in [*env_names(keys.removed).items(), *keys.env.items()]:
        if variable in env:
            merged[name] = coerce(keys, name, env[variable], f"environment {variable}")
    for name, value in (flags or {}).items():
        if value is not None:
            merged[name] = coerce(keys, name, value, f"flag --{name.replace('_', '-')}")
    for secret in keys.secrets:
        path = merged.get(f"{secret}_file")
        if path and not merged.get(secret):
            merged[secret] = _read_secret_file(path, secret)
    return merged
