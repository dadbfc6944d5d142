"""storage/settings.py: defaults, precedence of the four layers, validation, and saving."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import keyring.backend
import platformdirs
import pytest

from storage.secrets import SecretStore, resolve_password
from storage.settings import (
    CONFIG_DIR_ENV,
    SETTINGS,
    SETTINGS_FILE_NAME,
    Settings,
    SettingsError,
    load_settings,
    save_settings,
)
from tests.support.keyring_backend import MemoryKeyring, memory_keyring, no_keyring

__all__ = ["memory_keyring", "no_keyring"]  # fixtures, imported for pytest to find

EXPECTED_DEFAULTS: dict[str, object] = {
    "POSTGRES_DATABASE_URL": "",
    "USE_POSTGRES_CHECKPOINTER": True,
    "PREFER_ASYNC_POSTGRES": True,
    "POSTGRES_POOL_SIZE": 5,
    "POSTGRES_CONNECT_TIMEOUT": 5.0,
    "POSTGRES_RETRY_MAX_SECONDS": 5.0,
    "CAIRN_DATA_DIR": Path(platformdirs.user_data_dir("Cairn", "Cairn")),
    "MODEL_BASE_URL": "http://localhost:11434/v1",
    "MODEL_NAME": "",
    "MODEL_PRESET": "ollama",
    "SYSTEM_PROMPT": "",
    "MODEL_FIRST_TOKEN_TIMEOUT": 300.0,
    "MODEL_TOKEN_TIMEOUT": 60.0,
    "THEME": "system",
    "FONT_SIZE": 0,
}
SPEC = {spec.key: spec for spec in SETTINGS}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty working directory (where .env is looked for)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "config"


def write_file(config: Path, values: dict[str, object]) -> None:
    config.mkdir(parents=True, exist_ok=True)
    (config / SETTINGS_FILE_NAME).write_text(json.dumps(values), encoding="utf-8")


def write_dotenv(work: Path, text: str) -> None:
    (work / ".env").write_text(text, encoding="utf-8")


def load(work: Path, config: Path, environ: dict[str, str] | None = None, **kwargs: bool) -> Settings:
    return load_settings(environ=environ or {}, cwd=work, config_dir=config, **kwargs)


def files_text(directory: Path) -> str:
    files = (p for p in directory.rglob("*") if p.is_file())
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


# --------------------------------------------------------------------------------------------- defaults


def test_every_setting_has_a_pinned_default() -> None:
    assert set(EXPECTED_DEFAULTS) == set(SPEC)


@pytest.mark.parametrize("key", list(EXPECTED_DEFAULTS))
def test_default(key: str, work: Path, config: Path) -> None:
    settings = load(work, config)
    value = getattr(settings, SPEC[key].attr)
    assert value == EXPECTED_DEFAULTS[key]
    assert type(value) is type(EXPECTED_DEFAULTS[key]) or isinstance(value, Path)
    assert settings.sources[key] == "default"
    assert settings.problems == ()


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.key)
def test_every_spec_has_a_description_and_a_valid_default(spec: object) -> None:
    assert spec.description  # type: ignore[attr-defined]
    low, high = spec.minimum, spec.maximum  # type: ignore[attr-defined]
    if low is not None:
        assert low <= spec.default <= high  # type: ignore[attr-defined]


def test_specs_and_settings_fields_match() -> None:
    names = {f.name for f in dataclasses.fields(Settings)} - {"config_dir", "sources", "problems"}
    assert names == {spec.attr for spec in SETTINGS}


def test_config_dir_defaults_to_the_platform_folder(work: Path) -> None:
    settings = load_settings(environ={}, cwd=work)
    assert settings.config_dir == Path(platformdirs.user_config_dir("Cairn", "Cairn"))


def test_config_dir_from_environment_and_from_argument(work: Path, tmp_path: Path) -> None:
    write_file(tmp_path / "env-config", {"MODEL_NAME": "from-env-config"})
    settings = load_settings(environ={CONFIG_DIR_ENV: str(tmp_path / "env-config")}, cwd=work)
    assert settings.config_dir == tmp_path / "env-config"
    assert settings.model_name == "from-env-config"
    environ = {CONFIG_DIR_ENV: str(tmp_path / "env-config")}
    explicit = load_settings(environ=environ, cwd=work, config_dir=tmp_path)
    assert explicit.config_dir == tmp_path
    assert explicit.model_name == ""


# --------------------------------------------------------------------------------------------- precedence


def test_file_overrides_defaults(work: Path, config: Path) -> None:
    write_file(config, {"POSTGRES_POOL_SIZE": 7, "USE_POSTGRES_CHECKPOINTER": False, "MODEL_NAME": "llama"})
    settings = load(work, config)
    assert (settings.pool_size, settings.use_postgres, settings.model_name) == (7, False, "llama")
    assert settings.sources["POSTGRES_POOL_SIZE"] == "file"
    assert settings.sources["MODEL_PRESET"] == "default"


def test_dotenv_overrides_file_and_environment_overrides_dotenv(work: Path, config: Path) -> None:
    write_file(config, {"POSTGRES_POOL_SIZE": 7, "MODEL_NAME": "file", "MODEL_PRESET": "openai"})
    write_dotenv(work, "POSTGRES_POOL_SIZE=8\nMODEL_NAME=dotenv\n")
    settings = load(work, config, {"POSTGRES_POOL_SIZE": "9"})
    assert settings.pool_size == 9
    assert settings.sources["POSTGRES_POOL_SIZE"] == "environment"
    assert settings.model_name == "dotenv"
    assert settings.sources["MODEL_NAME"] == ".env"
    assert settings.model_preset == "openai"
    assert settings.sources["MODEL_PRESET"] == "file"


def test_dotenv_is_not_loaded_into_the_process_environment(work: Path, config: Path) -> None:
    write_dotenv(work, "MODEL_NAME=from-dotenv-only\n")
    assert load(work, config).model_name == "from-dotenv-only"
    assert "from-dotenv-only" not in os.environ.values()


def test_dotenv_values_are_literal(work: Path, config: Path) -> None:
    write_dotenv(work, "POSTGRES_DATABASE_URL='postgresql://u:pa$${x}ss@h/db'\n")
    assert load(work, config).postgres_url == "postgresql://u:pa$${x}ss@h/db"


def test_empty_typed_value_means_not_set_here(work: Path, config: Path) -> None:
    write_file(config, {"POSTGRES_POOL_SIZE": 7})
    write_dotenv(work, "POSTGRES_POOL_SIZE=\nMODEL_NAME=dotenv\n")
    settings = load(work, config, {"MODEL_NAME": ""})
    assert settings.pool_size == 7
    assert settings.model_name == ""  # text may be set to empty on purpose
    assert settings.sources["MODEL_NAME"] == "environment"


def test_environment_is_read_from_os_environ_by_default(
    work: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_NAME", "from-os-environ")
    assert load_settings(cwd=work, config_dir=config).model_name == "from-os-environ"


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True), ("Yes", True),
        ("on", True), ("ON", True), (" true ", True),
        ("false", False), ("FALSE", False), ("0", False), ("no", False), ("NO", False), ("off", False),
        ("Off", False),
    ],
)
def test_bool_parsing(word: str, value: bool, work: Path, config: Path) -> None:
    settings = load(work, config, {"USE_POSTGRES_CHECKPOINTER": word, "PREFER_ASYNC_POSTGRES": word})
    assert settings.use_postgres is value
    assert settings.prefer_async_postgres is value


def test_numbers_and_paths_are_parsed(work: Path, config: Path) -> None:
    settings = load(
        work,
        config,
        {
            "POSTGRES_POOL_SIZE": " 12 ",
            "POSTGRES_CONNECT_TIMEOUT": "2.5",
            "POSTGRES_RETRY_MAX_SECONDS": "30",
            "CAIRN_DATA_DIR": "data/here",
        },
    )
    assert settings.pool_size == 12
    assert settings.connect_timeout == 2.5
    assert settings.retry_max_seconds == 30.0
    assert isinstance(settings.retry_max_seconds, float)
    assert settings.data_dir == work / "data" / "here"


def test_data_dir_expands_the_home_folder(work: Path, config: Path) -> None:
    assert load(work, config, {"CAIRN_DATA_DIR": "~/cairn-data"}).data_dir == Path.home() / "cairn-data"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("POSTGRES_POOL_SIZE", "1"), ("POSTGRES_POOL_SIZE", "100"),
        ("POSTGRES_CONNECT_TIMEOUT", "0.5"), ("POSTGRES_CONNECT_TIMEOUT", "120"),
        ("POSTGRES_RETRY_MAX_SECONDS", "0.1"), ("POSTGRES_RETRY_MAX_SECONDS", "3600"),
    ],
)
def test_bounds_are_inclusive(key: str, value: str, work: Path, config: Path) -> None:
    settings = load(work, config, {key: value})
    assert getattr(settings, SPEC[key].attr) == float(value)


INVALID = [
    ("USE_POSTGRES_CHECKPOINTER", "maybe", "expected true or false"),
    ("PREFER_ASYNC_POSTGRES", "2", "expected true or false"),
    ("POSTGRES_POOL_SIZE", "abc", "expected an integer between 1 and 100"),
    ("POSTGRES_POOL_SIZE", "0", "expected an integer between 1 and 100"),
    ("POSTGRES_POOL_SIZE", "101", "expected an integer between 1 and 100"),
    ("POSTGRES_POOL_SIZE", "2.5", "expected an integer between 1 and 100"),
    ("POSTGRES_CONNECT_TIMEOUT", "soon", "expected a number between 0.5 and 120"),
    ("POSTGRES_CONNECT_TIMEOUT", "0.1", "expected a number between 0.5 and 120"),
    ("POSTGRES_CONNECT_TIMEOUT", "nan", "expected a number between 0.5 and 120"),
    ("POSTGRES_RETRY_MAX_SECONDS", "-1", "expected a number between 0.1 and 3600"),
    ("POSTGRES_RETRY_MAX_SECONDS", "inf", "expected a number between 0.1 and 3600"),
    ("THEME", "purple", "expected system or light or dark"),
    ("FONT_SIZE", "99", "expected an integer between 0 and 48"),
]


@pytest.mark.parametrize(("key", "value", "expectation"), INVALID)
def test_invalid_value_from_environment_names_key_value_and_source(
    key: str, value: str, expectation: str, work: Path, config: Path
) -> None:
    with pytest.raises(SettingsError) as info:
        load(work, config, {key: value})
    assert str(info.value).startswith(f"{key}={value} (from environment): {expectation}")


@pytest.mark.parametrize(("key", "value", "expectation"), INVALID)
def test_invalid_value_from_dotenv(key: str, value: str, expectation: str, work: Path, config: Path) -> None:
    write_dotenv(work, f"{key}={value}\n")
    with pytest.raises(SettingsError, match=rf"^{key}=\S+ \(from \.env\): {expectation}"):
        load(work, config)


def test_the_example_message(work: Path, config: Path) -> None:
    write_dotenv(work, "POSTGRES_POOL_SIZE=abc\n")
    with pytest.raises(SettingsError) as info:
        load(work, config)
    assert str(info.value) == "POSTGRES_POOL_SIZE=abc (from .env): expected an integer between 1 and 100"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("POSTGRES_POOL_SIZE", "abc"),
        ("POSTGRES_POOL_SIZE", True),
        ("POSTGRES_POOL_SIZE", [5]),
        ("USE_POSTGRES_CHECKPOINTER", "perhaps"),
        ("USE_POSTGRES_CHECKPOINTER", 2),
        ("POSTGRES_CONNECT_TIMEOUT", "fast"),
        ("CAIRN_DATA_DIR", 5),
        ("MODEL_NAME", 5),
        ("POSTGRES_DATABASE_URL", {"host": "h"}),
    ],
)
def test_invalid_value_from_file_names_key_and_file(
    key: str, value: object, work: Path, config: Path
) -> None:
    write_file(config, {key: value})
    with pytest.raises(SettingsError) as info:
        load(work, config)
    message = str(info.value)
    assert message.startswith(f"{key}=")
    assert str(config / SETTINGS_FILE_NAME) in message


def test_a_choice_is_taken_in_any_case_and_empty_as_unset(work: Path, config: Path) -> None:
    assert load(work, config, {"THEME": " Dark "}).theme == "dark"
    settings = load(work, config, {"THEME": ""})
    assert (settings.theme, settings.sources["THEME"]) == ("system", "default")


def test_file_accepts_json_types_and_strings(work: Path, config: Path) -> None:
    write_file(
        config,
        {"POSTGRES_POOL_SIZE": "6", "USE_POSTGRES_CHECKPOINTER": "off", "POSTGRES_CONNECT_TIMEOUT": 3,
         "PREFER_ASYNC_POSTGRES": False},
    )
    settings = load(work, config)
    assert (settings.pool_size, settings.use_postgres, settings.connect_timeout) == (6, False, 3.0)
    assert settings.prefer_async_postgres is False


def test_overridden_bad_value_does_not_matter(work: Path, config: Path) -> None:
    write_file(config, {"POSTGRES_POOL_SIZE": "abc"})
    assert load(work, config, {"POSTGRES_POOL_SIZE": "3"}).pool_size == 3


def test_a_password_in_an_invalid_value_message_is_masked(work: Path, config: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load(work, config, {"POSTGRES_POOL_SIZE": "postgresql://u:hunter2@h/db"})
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------------------------- non-strict


def test_non_strict_falls_back_to_the_default_and_reports(work: Path, config: Path) -> None:
    write_file(config, {"POSTGRES_POOL_SIZE": 3})
    write_dotenv(work, "POSTGRES_POOL_SIZE=abc\n")
    settings = load(work, config, {"USE_POSTGRES_CHECKPOINTER": "maybe", "MODEL_NAME": "ok"}, strict=False)
    assert settings.pool_size == 5
    assert settings.sources["POSTGRES_POOL_SIZE"] == "default"
    assert settings.use_postgres is True
    assert settings.model_name == "ok"
    assert len(settings.problems) == 2
    assert any(p.startswith("POSTGRES_POOL_SIZE=abc (from .env)") for p in settings.problems)
    assert any(p.startswith("USE_POSTGRES_CHECKPOINTER=maybe (from environment)") for p in settings.problems)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '"text"', "\xff\xfe"])
def test_corrupt_settings_file_strict_raises_naming_the_file(content: str, work: Path, config: Path) -> None:
    config.mkdir()
    (config / SETTINGS_FILE_NAME).write_bytes(content.encode("latin-1"))
    with pytest.raises(SettingsError, match=SETTINGS_FILE_NAME):
        load(work, config)


def test_corrupt_settings_file_non_strict_is_ignored_and_reported(work: Path, config: Path) -> None:
    config.mkdir()
    (config / SETTINGS_FILE_NAME).write_text("{not json", encoding="utf-8")
    write_dotenv(work, "MODEL_NAME=still-read\n")
    settings = load(work, config, strict=False)
    assert settings.model_name == "still-read"
    assert settings.pool_size == 5
    assert len(settings.problems) == 1
    assert str(config / SETTINGS_FILE_NAME) in settings.problems[0]


def test_a_retired_key_in_the_file_is_ignored_without_a_warning_and_dropped_at_the_next_save(
    work: Path, config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # CHAT_VIEW chose the cards preview; cards are the only view now, and people who tried it still have the key.
    write_file(config, {"CHAT_VIEW": "cards", "MODEL_NAME": "m"})
    with caplog.at_level(logging.WARNING):
        settings = load(work, config)  # strict: a warning would raise
        assert load(work, config, strict=False).problems == ()
    assert settings.model_name == "m"
    assert "CHAT_VIEW" not in settings.sources and "CHAT_VIEW" not in str(settings.display_items())
    assert caplog.records == []

    save_settings({"THEME": "dark"}, config_dir=config, secrets=SecretStore())
    saved = json.loads((config / SETTINGS_FILE_NAME).read_text(encoding="utf-8"))
    assert saved == {"MODEL_NAME": "m", "THEME": "dark"}


def test_unknown_key_in_file(work: Path, config: Path) -> None:
    write_file(config, {"POSTGRES_POOL_SIZ": 3, "MODEL_NAME": "m"})
    with pytest.raises(SettingsError, match="POSTGRES_POOL_SIZ"):
        load(work, config)
    settings = load(work, config, strict=False)
    assert settings.model_name == "m"
    assert any("POSTGRES_POOL_SIZ" in p for p in settings.problems)


# --------------------------------------------------------------------------------------------- display


def test_repr_and_display_mask_the_url_password(work: Path, config: Path) -> None:
    settings = load(work, config, {"POSTGRES_DATABASE_URL": "postgresql://u:hunter2@h/db"})
    assert settings.postgres_url == "postgresql://u:hunter2@h/db"  # callers need the real value
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.display_items())
    assert ("POSTGRES_DATABASE_URL", "postgresql://u:***@h/db", "environment") in settings.display_items()


def test_postgres_enabled_needs_a_url_and_the_switch(work: Path, config: Path) -> None:
    assert load(work, config).postgres_enabled is False
    url = {"POSTGRES_DATABASE_URL": "postgresql://h/db"}
    assert load(work, config, url).postgres_enabled is True
    assert load(work, config, {**url, "USE_POSTGRES_CHECKPOINTER": "false"}).postgres_enabled is False


# --------------------------------------------------------------------------------------------- saving


def test_save_merges_and_loads_back(work: Path, config: Path, memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    save_settings({"MODEL_NAME": "llama", "POSTGRES_POOL_SIZE": 9}, config_dir=config, secrets=store)
    save_settings(
        {"USE_POSTGRES_CHECKPOINTER": "no", "POSTGRES_CONNECT_TIMEOUT": 2}, config_dir=config, secrets=store
    )
    settings = load(work, config)
    assert (settings.model_name, settings.pool_size, settings.use_postgres) == ("llama", 9, False)
    assert settings.connect_timeout == 2.0
    assert json.loads((config / SETTINGS_FILE_NAME).read_text())["USE_POSTGRES_CHECKPOINTER"] is False
    assert [p.name for p in config.iterdir()] == [SETTINGS_FILE_NAME]  # no temp file left behind


def test_save_none_removes_a_key(work: Path, config: Path, memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    save_settings({"POSTGRES_POOL_SIZE": 9}, config_dir=config, secrets=store)
    save_settings({"POSTGRES_POOL_SIZE": None}, config_dir=config, secrets=store)
    assert load(work, config).sources["POSTGRES_POOL_SIZE"] == "default"


def test_save_rejects_invalid_values_and_writes_nothing(config: Path, memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    save_settings({"MODEL_NAME": "kept"}, config_dir=config, secrets=store)
    before = (config / SETTINGS_FILE_NAME).read_text()
    with pytest.raises(SettingsError, match=r"^POSTGRES_POOL_SIZE=0 \(to save\): expected an integer"):
        save_settings({"MODEL_NAME": "new", "POSTGRES_POOL_SIZE": 0}, config_dir=config, secrets=store)
    with pytest.raises(SettingsError, match="NOT_A_SETTING"):
        save_settings({"NOT_A_SETTING": 1}, config_dir=config, secrets=store)
    assert (config / SETTINGS_FILE_NAME).read_text() == before


def test_save_moves_the_url_password_to_the_keyring(
    work: Path, config: Path, memory_keyring: MemoryKeyring
) -> None:
    store = SecretStore()
    url = "postgresql://alice:s%40cret%3Apw@db.example.com:5432/cairn"
    save_settings({"POSTGRES_DATABASE_URL": url}, config_dir=config, secrets=store)
    settings = load(work, config)
    assert settings.postgres_url == "postgresql://alice@db.example.com:5432/cairn"
    assert memory_keyring.passwords == {("cairn", "postgres:alice@db.example.com:5432/cairn"): "s@cret:pw"}
    assert resolve_password(settings.postgres_url, SecretStore()) == "s@cret:pw"
    text = files_text(config)
    assert "s@cret" not in text
    assert "s%40cret" not in text


def test_save_moves_a_hand_written_password_when_the_keyring_keeps_it(
    config: Path, memory_keyring: MemoryKeyring
) -> None:
    write_file(config, {"POSTGRES_DATABASE_URL": "postgresql://u:handwritten@h/db"})
    save_settings({"MODEL_NAME": "m"}, config_dir=config, secrets=SecretStore())
    assert "handwritten" not in files_text(config)
    assert memory_keyring.passwords == {("cairn", "postgres:u@h:5432/db"): "handwritten"}


def test_save_without_keyring_keeps_the_password_for_the_session_only(
    work: Path, config: Path, no_keyring: keyring.backend.KeyringBackend
) -> None:
    store = SecretStore()
    assert store.warning is not None
    save_settings({"POSTGRES_DATABASE_URL": "postgresql://u:hunter2@h/db"}, config_dir=config, secrets=store)
    assert "hunter2" not in files_text(config)
    assert load(work, config).postgres_url == "postgresql://u@h/db"
    assert resolve_password("postgresql://u@h/db", store) == "hunter2"
    assert resolve_password("postgresql://u@h/db", SecretStore()) is None  # next start: asked again


def test_save_without_keyring_leaves_a_hand_written_password_alone(
    config: Path, no_keyring: keyring.backend.KeyringBackend
) -> None:
    # Moving it into this session's memory would lose it when the app quits.
    write_file(config, {"POSTGRES_DATABASE_URL": "postgresql://u:handwritten@h/db"})
    save_settings({"MODEL_NAME": "m"}, config_dir=config, secrets=SecretStore())
    assert "handwritten" in (config / SETTINGS_FILE_NAME).read_text()


def test_save_over_a_corrupt_file_keeps_it_aside(
    work: Path, config: Path, memory_keyring: MemoryKeyring
) -> None:
    config.mkdir()
    (config / SETTINGS_FILE_NAME).write_text("{not json", encoding="utf-8")
    save_settings({"MODEL_NAME": "m"}, config_dir=config, secrets=SecretStore())
    assert load(work, config).model_name == "m"
    assert (config / (SETTINGS_FILE_NAME + ".corrupt")).read_text() == "{not json"


def test_save_stores_paths_as_text(work: Path, config: Path, memory_keyring: MemoryKeyring) -> None:
    save_settings({"CAIRN_DATA_DIR": work / "data"}, config_dir=config, secrets=SecretStore())
    assert json.loads((config / SETTINGS_FILE_NAME).read_text())["CAIRN_DATA_DIR"] == str(work / "data")
    assert load(work, config).data_dir == work / "data"
