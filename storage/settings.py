"""Cairn's settings: declared as data, read from four layers, validated in one place.

Precedence, lowest first: the defaults below < `settings.json` in the config dir < `.env` in the working
directory < environment variables. `.env` is read, never loaded into `os.environ`; its values are taken
literally (no `${VAR}` expansion), so a password containing `$` survives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import platformdirs
from dotenv import dotenv_values

from storage.secrets import SecretStore, mask_secrets, mask_url, store_url_password

log = logging.getLogger(__name__)

APP_NAME = "Cairn"
SETTINGS_FILE_NAME = "settings.json"
CONFIG_DIR_ENV = "CAIRN_CONFIG_DIR"

SettingType = Literal["str", "bool", "int", "float", "path"]
Source = Literal["default", "file", ".env", "environment"]


def default_config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, APP_NAME))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, APP_NAME))


@dataclass(frozen=True)
class SettingSpec:
    key: str
    attr: str
    type: SettingType
    default: object
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    """For text: the only values allowed (empty: any text)."""


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "POSTGRES_DATABASE_URL", "postgres_url", "str", "",
        "PostgreSQL URL for conversations shared between machines; empty keeps them on this machine only. "
        "A password typed here is moved to the OS keyring.",
    ),
    SettingSpec(
        "USE_POSTGRES_CHECKPOINTER", "use_postgres", "bool", True,
        "Use PostgreSQL when a URL is configured.",
    ),
    SettingSpec(
        "PREFER_ASYNC_POSTGRES", "prefer_async_postgres", "bool", True,
        "Talk to PostgreSQL asynchronously; off runs the synchronous driver on a worker thread.",
    ),
    SettingSpec(
        "POSTGRES_POOL_SIZE", "pool_size", "int", 5,
        "Largest number of PostgreSQL connections held open.", 1, 100,
    ),
    SettingSpec(
        "POSTGRES_CONNECT_TIMEOUT", "connect_timeout", "float", 5.0,
        "Seconds to wait for PostgreSQL to accept a connection.", 0.5, 120,
    ),
    SettingSpec(
        "POSTGRES_RETRY_MAX_SECONDS", "retry_max_seconds", "float", 5.0,
        "Longest wait, in seconds, between attempts to reconnect to PostgreSQL.", 0.1, 3600,
    ),
    SettingSpec(
        "CAIRN_DATA_DIR", "data_dir", "path", default_data_dir(),
        "Folder for the local conversation database.",
    ),
    SettingSpec(
        "MODEL_BASE_URL", "model_base_url", "str", "http://localhost:11434/v1",
        "Base URL of the OpenAI-compatible model server.",
    ),
    SettingSpec("MODEL_NAME", "model_name", "str", "", "Model to chat with; empty picks the server's first."),
    SettingSpec(
        "MODEL_PRESET", "model_preset", "str", "ollama",
        "Model server preset: ollama, lmstudio, llamacpp or openai.",
    ),
    SettingSpec("SYSTEM_PROMPT", "system_prompt", "str", "", "System prompt sent before every conversation."),
    SettingSpec(
        "MODEL_FIRST_TOKEN_TIMEOUT", "model_first_token_timeout", "float", 300.0,
        "Seconds to wait for the first word of a reply; generous, as a local server may load the model first.",
        1, 3600,
    ),
    SettingSpec(
        "MODEL_TOKEN_TIMEOUT", "model_token_timeout", "float", 60.0,
        "Seconds of silence allowed between words once a reply is flowing.", 1, 3600,
    ),
    SettingSpec(
        "THEME", "theme", "str", "system",
        "Light or dark window: system follows the desktop's.",
        choices=("system", "light", "dark"),
    ),
    SettingSpec(
        "FONT_SIZE", "font_size", "int", 0,
        "Text size in points; 0 keeps the desktop's.", 0, 48,
    ),
)

SPECS_BY_KEY: Mapping[str, SettingSpec] = {spec.key: spec for spec in SETTINGS}

RETIRED_KEYS = frozenset({"CHAT_VIEW"})
"""Settings Cairn once had: a file that still holds one (people who tried the cards preview) is not wrong, so the key
is ignored without a warning, and dropped the next time the file is saved."""


class SettingsError(ValueError):
    """A setting has a value Cairn cannot use, or the settings file cannot be read."""


@dataclass(frozen=True, repr=False)
class Settings:
    postgres_url: str
    use_postgres: bool
    prefer_async_postgres: bool
    pool_size: int
    connect_timeout: float
    retry_max_seconds: float
    data_dir: Path
    model_base_url: str
    model_name: str
    model_preset: str
    system_prompt: str
    model_first_token_timeout: float
    model_token_timeout: float
    theme: str
    font_size: int
    config_dir: Path
    # key -> "default" | "file" | ".env" | "environment": where each value in effect came from.
    sources: dict[str, str] = field(default_factory=dict)
    # What load_settings(strict=False) ignored, one sentence each, ready to show.
    problems: tuple[str, ...] = ()

    @property
    def settings_file(self) -> Path:
        return self.config_dir / SETTINGS_FILE_NAME

    @property
    def postgres_enabled(self) -> bool:
        return self.use_postgres and bool(self.postgres_url.strip())

    def display_items(self) -> list[tuple[str, str, str]]:
        """(key, value as shown, source) per setting; URLs are masked."""
        rows = []
        for spec in SETTINGS:
            value = getattr(self, spec.attr)
            shown = mask_url(value) if spec.key == "POSTGRES_DATABASE_URL" else _format_value(value)
            rows.append((spec.key, shown, self.sources.get(spec.key, "default")))
        return rows

    def __repr__(self) -> str:
        parts = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "postgres_url":
                value = mask_url(value)
            parts.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(parts)})"


# --------------------------------------------------------------------------------------------- validation

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _number(value: float) -> str:
    return f"{value:g}"


def _expectation(spec: SettingSpec) -> str:
    if spec.type == "bool":
        return "expected true or false (or 1/0, yes/no, on/off)"
    if spec.type == "str":
        return "expected " + " or ".join(spec.choices) if spec.choices else "expected text"
    if spec.type == "path":
        return "expected a folder path"
    noun = "an integer" if spec.type == "int" else "a number"
    if spec.minimum is not None and spec.maximum is not None:
        return f"expected {noun} between {_number(spec.minimum)} and {_number(spec.maximum)}"
    if spec.minimum is not None:
        return f"expected {noun} of at least {_number(spec.minimum)}"
    if spec.maximum is not None:
        return f"expected {noun} of at most {_number(spec.maximum)}"
    return f"expected {noun}"


def _is_unset(spec: SettingSpec, raw: object) -> bool:
    # `KEY=` in .env or the environment means "not set here" for typed settings and choices; for free text it is a
    # real value.
    if raw is None:
        return True
    return (spec.type != "str" or bool(spec.choices)) and isinstance(raw, str) and not raw.strip()


def _in_range(spec: SettingSpec, value: float) -> bool:
    if spec.minimum is not None and value < spec.minimum:
        return False
    return spec.maximum is None or value <= spec.maximum


def _convert(spec: SettingSpec, raw: object, base_dir: Path) -> object:
    """The typed value of `raw` (a string from .env or the environment, or a JSON value), else ValueError."""
    if spec.type == "str":
        if not isinstance(raw, str):
            raise ValueError(_expectation(spec))
        if spec.choices:
            word = raw.strip().lower()
            if word not in spec.choices:
                raise ValueError(_expectation(spec))
            return word
        return raw
    if spec.type == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str):
            word = raw.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        raise ValueError(_expectation(spec))
    if spec.type == "path":
        if not isinstance(raw, str | os.PathLike):
            raise ValueError(_expectation(spec))
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base_dir / path
    if isinstance(raw, bool):  # bool is an int subclass: `true` is not a pool size
        raise ValueError(_expectation(spec))
    number: int | float
    if spec.type == "int":
        if isinstance(raw, int):
            number = raw
        elif isinstance(raw, float) and raw.is_integer():
            number = int(raw)
        elif isinstance(raw, str):
            try:
                number = int(raw.strip())
            except ValueError:
                raise ValueError(_expectation(spec)) from None
        else:
            raise ValueError(_expectation(spec))
    else:
        if isinstance(raw, int | float):
            number = float(raw)
        elif isinstance(raw, str):
            try:
                number = float(raw.strip())
            except ValueError:
                raise ValueError(_expectation(spec)) from None
        else:
            raise ValueError(_expectation(spec))
        if not math.isfinite(number):
            raise ValueError(_expectation(spec))
    if not _in_range(spec, number):
        raise ValueError(_expectation(spec))
    return number


def _format_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _invalid_message(spec: SettingSpec, raw: object, origin: str, expectation: str) -> str:
    shown = mask_secrets(_format_value(raw))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{spec.key}={shown} ({origin}): {expectation}"


# --------------------------------------------------------------------------------------------- loading


def _report(problems: list[str], message: str, strict: bool, consequence: str) -> None:
    """Raise `message` when strict; else log and keep it, with what was done instead."""
    if strict:
        raise SettingsError(message)
    message = f"{message}; {consequence}"
    log.warning("settings: %s", message)
    problems.append(message)


def _read_dotenv(path: Path, problems: list[str], strict: bool) -> dict[str, str | None]:
    if not path.is_file():
        return {}
    try:
        return dotenv_values(path, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        _report(problems, f"{path}: cannot be read ({exc})", strict, "its values are ignored")
        return {}


def _read_settings_file(path: Path) -> dict[str, Any]:
    """The settings file's object, {} if there is none; SettingsError naming the file if it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot be read ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a JSON object of settings, found {type(data).__name__}")
    return data


def _resolve_config_dir(
    config_dir: Path | None, environ: Mapping[str, str], dotenv_layer: Mapping[str, str | None]
) -> Path:
    if config_dir is not None:
        return Path(config_dir)
    for layer in (environ, dotenv_layer):
        value = layer.get(CONFIG_DIR_ENV)
        if value and value.strip():
            return Path(value).expanduser()
    return default_config_dir()


def load_settings(
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    config_dir: Path | None = None,
    strict: bool = True,
) -> Settings:
    """Read the settings in effect.

    strict=True raises SettingsError on the first unusable value or an unreadable settings file.
    strict=False never raises for them: each problem is logged and listed in `Settings.problems`, a bad value
    falls back to the key's default, and a corrupt file is ignored as a whole.
    `config_dir` defaults to $CAIRN_CONFIG_DIR (environment, then .env), else the platform's config folder.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    work_dir = Path.cwd() if cwd is None else Path(cwd)
    problems: list[str] = []

    dotenv_layer = _read_dotenv(work_dir / ".env", problems, strict)
    directory = _resolve_config_dir(config_dir, env, dotenv_layer)
    settings_path = directory / SETTINGS_FILE_NAME
    try:
        file_layer = _read_settings_file(settings_path)
    except SettingsError as exc:
        _report(problems, str(exc), strict, "its values are ignored")
        file_layer = {}
    for key in sorted(set(file_layer) - set(SPECS_BY_KEY) - RETIRED_KEYS):
        _report(problems, f"{settings_path}: unknown setting {key}", strict, "it is ignored")

    layers: tuple[tuple[Source, str, Mapping[str, object]], ...] = (
        ("environment", "from environment", env),
        (".env", "from .env", dotenv_layer),
        ("file", f"from settings file {settings_path}", file_layer),
    )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        values[spec.attr] = spec.default
        sources[spec.key] = "default"
        for source, origin, layer in layers:
            raw = layer.get(spec.key)
            if _is_unset(spec, raw):
                continue
            try:
                values[spec.attr] = _convert(spec, raw, work_dir)
            except ValueError as exc:
                message = _invalid_message(spec, raw, origin, str(exc))
                _report(problems, message, strict, f"using the default {_format_value(spec.default)}")
            else:
                sources[spec.key] = source
            break  # the highest layer that sets a key decides it, valid or not
    return Settings(**values, config_dir=directory, sources=sources, problems=tuple(problems))


# --------------------------------------------------------------------------------------------- saving


def _to_json(spec: SettingSpec, value: object) -> object:
    return str(value) if spec.type == "path" else value


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def save_settings(values: Mapping[str, object], *, config_dir: Path, secrets: SecretStore) -> None:
    """Validate `values` (key -> value; None removes a key) and merge them into <config_dir>/settings.json.

    Nothing is written unless every value is valid. A password inside POSTGRES_DATABASE_URL goes to `secrets`
    and the URL is stored without it. A settings file that cannot be parsed is kept beside the new one as
    `settings.json.corrupt` rather than overwritten.
    """
    updates: dict[str, object | None] = {}
    for key, value in values.items():
        spec = SPECS_BY_KEY.get(key)
        if spec is None:
            raise SettingsError(f"{key}: unknown setting")
        if _is_unset(spec, value):
            updates[key] = None
            continue
        try:
            converted = _convert(spec, value, Path.cwd())
        except ValueError as exc:
            raise SettingsError(_invalid_message(spec, value, "to save", str(exc))) from None
        updates[key] = _to_json(spec, converted)

    path = Path(config_dir) / SETTINGS_FILE_NAME
    try:
        current = _read_settings_file(path)
    except SettingsError as exc:
        backup = path.with_name(SETTINGS_FILE_NAME + ".corrupt")
        log.warning("settings: %s; keeping it as %s and writing a new one", exc, backup)
        os.replace(path, backup)
        current = {}

    url = updates.get("POSTGRES_DATABASE_URL")
    if isinstance(url, str) and url.strip():
        try:
            updates["POSTGRES_DATABASE_URL"] = store_url_password(url, secrets)
        except ValueError as exc:
            spec = SPECS_BY_KEY["POSTGRES_DATABASE_URL"]
            raise SettingsError(_invalid_message(spec, mask_url(url), "to save", str(exc))) from None
    elif "POSTGRES_DATABASE_URL" not in updates and secrets.persistent:
        # A password written into the file by hand moves too, but only to a keyring that keeps it:
        # moving it into this session's memory would lose it at exit.
        existing = current.get("POSTGRES_DATABASE_URL")
        if isinstance(existing, str) and existing.strip():
            with contextlib.suppress(ValueError):
                current["POSTGRES_DATABASE_URL"] = store_url_password(existing, secrets)

    for key in RETIRED_KEYS:
        current.pop(key, None)
    for key, value in updates.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    _write_atomically(path, json.dumps(current, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    log.info("settings: saved %s to %s", ", ".join(sorted(updates)) or "nothing", path)
