"""load_settings: defaults, config.yaml, VAULT_* environment, explicit overrides, validation."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vault.config import Settings, load_settings, parse_size
from vault.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PATH_FIELDS = {"data_dir", "tls_cert", "tls_key"}


def write_config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    for f in dataclasses.fields(Settings):
        if f.name not in PATH_FIELDS:
            assert getattr(settings, f.name) == f.default, f.name
    assert settings.host == "127.0.0.1"
    assert settings.port == 5000
    assert settings.bcrypt_rounds == 12
    assert settings.log_level == "INFO"
    assert settings.data_dir == tmp_path / "data"
    assert settings.tls_cert == tmp_path / "certs" / "cert.pem"
    assert settings.tls_key == tmp_path / "certs" / "key.pem"
    assert settings.db_path == tmp_path / "data" / "vault.db"


def test_empty_config_file_gives_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, "# nothing set\n"), environ={})
    assert settings.port == 5000
    assert settings.data_dir == tmp_path / "data"


def test_values_from_the_config_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "host: 192.0.2.1\nport: 8443\nbcrypt_rounds: 10\nsegment_size: 65536\n"
        "log_level: debug\njwt_issuer: issuer-x\nmax_file_size: 1024\n",
    )
    settings = load_settings(config, environ={})
    assert settings.host == "192.0.2.1"
    assert settings.port == 8443
    assert settings.bcrypt_rounds == 10
    assert settings.segment_size == 65536
    assert settings.log_level == "DEBUG"
    assert settings.jwt_issuer == "issuer-x"
    assert settings.max_file_size == 1024
    assert settings.token_ttl == 900  # untouched keys keep their defaults


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port: 8443\nhost: 192.0.2.1\n")
    environ = {"VAULT_PORT": "9000", "VAULT_LOG_LEVEL": "warning", "UNRELATED": "x"}
    settings = load_settings(config, environ=environ)
    assert settings.port == 9000
    assert settings.log_level == "WARNING"
    assert settings.host == "192.0.2.1"


def test_explicit_overrides_beat_the_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port: 8443\n")
    settings = load_settings(config, environ={"VAULT_PORT": "9000"}, overrides={"port": 9100})
    assert settings.port == 9100


def test_override_of_none_keeps_the_lower_value(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port: 8443\nhost: 192.0.2.1\n")
    settings = load_settings(
        config, environ={"VAULT_PORT": "9000"}, overrides={"port": None, "host": None, "data_dir": None}
    )
    assert settings.port == 9000
    assert settings.host == "192.0.2.1"
    assert settings.data_dir == tmp_path / "data"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, ""), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config_dir = tmp_path / "etc" / "vault"
    config = write_config(
        config_dir, f"data_dir: store\ntls_cert: tls/c.pem\ntls_key: {tmp_path}/abs/k.pem\n"
    )
    settings = load_settings(config, environ={})
    assert settings.data_dir == config_dir / "store"
    assert settings.tls_cert == config_dir / "tls" / "c.pem"
    assert settings.tls_key == tmp_path / "abs" / "k.pem"


def test_relative_path_given_to_a_relative_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "conf", "data_dir: store\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("conf/config.yaml"), environ={})
    assert settings.data_dir == tmp_path / "conf" / "store"
    assert settings.data_dir.is_absolute()


def test_relative_paths_from_environment_and_overrides_resolve_against_the_config_directory(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "conf", "")
    settings = load_settings(
        config, environ={"VAULT_TLS_CERT": "env/c.pem"}, overrides={"data_dir": Path("flag-data")}
    )
    assert settings.tls_cert == tmp_path / "conf" / "env" / "c.pem"
    assert settings.data_dir == tmp_path / "conf" / "flag-data"


def test_home_directory_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load_settings(write_config(tmp_path, "data_dir: ~/vault-data\n"), environ={})
    assert settings.data_dir == tmp_path / "home" / "vault-data"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("port: 70000\n", "port"),
        ("port: -1\n", "port"),
        ("port: abc\n", "port"),
        ("port: true\n", "port"),
        ("port:\n", "port"),
        ("port: [1, 2]\n", "port"),
        ("port: 5000.5\n", "port"),  # a fractional number is not silently truncated
        ("bcrypt_rounds: 3\n", "bcrypt_rounds"),
        ("bcrypt_rounds: 32\n", "bcrypt_rounds"),
        ("disk_reserve: 1048576\n", "disk_reserve"),  # 0 or at least 20 MiB
        ("disk_reserve: -1\n", "disk_reserve"),
        ("bcrypt_rounds: false\n", "bcrypt_rounds"),
        ("segment_size: 1000\n", "segment_size"),
        ("segment_size: 4097\n", "segment_size"),
        ("segment_size: 33554432\n", "segment_size"),
        ("max_json_size: 10\n", "max_json_size"),
        ("token_ttl: 0\n", "token_ttl"),
        ("refresh_ttl: 0\n", "refresh_ttl"),
        ("crypto_threads: 0\n", "crypto_threads"),
        ("log_level: LOUD\n", "log_level"),
        ("log_level: [INFO]\n", "log_level"),
        ("host: ''\n", "host"),
        ("jwt_audience: ''\n", "jwt_audience"),
        ("data_dir: ''\n", "data_dir"),
        ("data_dir: 5\n", "data_dir"),
        ("colour: blue\n", "colour"),
        ("Port: 5000\n", "Port"),
    ],
)
def test_bad_value_in_file_raises_config_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, text), environ={})
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("VAULT_PORT", "abc", "port"),
        ("VAULT_PORT", "70000", "port"),
        ("VAULT_BCRYPT_ROUNDS", "3", "bcrypt_rounds"),
        ("VAULT_SEGMENT_SIZE", "4097", "segment_size"),
        ("VAULT_LOG_LEVEL", "LOUD", "log_level"),
        ("VAULT_DATA_DIR", "", "data_dir"),
    ],
)
def test_bad_value_in_environment_raises_config_error_naming_the_key(
    tmp_path: Path, variable: str, value: str, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, ""), environ={variable: value})
    assert f"'{key}'" in str(info.value)


def test_bad_override_raises_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'port'"):
        load_settings(write_config(tmp_path, ""), environ={}, overrides={"port": 70000})


@pytest.mark.parametrize(
    "text",
    [
        "- port\n- 5000\n",
        "just a string\n",
        "42\n",
        "port: [unclosed\n",
        "port: 1\n  bad: indent\n",
        "\tport: 1\n",
    ],
    ids=["list", "scalar-string", "scalar-int", "unclosed-flow", "bad-indent", "tab-indent"],
)
def test_config_file_that_is_not_a_mapping_raises_config_error_naming_the_file(
    tmp_path: Path, text: str
) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    assert str(config) in str(info.value)


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_run_py_with_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port: 70000\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--config", str(config)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,  # a safety net should the server start; never reached when it works
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "'port'" in result.stderr
    assert "listening" not in result.stdout
    assert not (tmp_path / "data").exists()


# --- documentation --------------------------------------------------------------------------


def readme_settings_table() -> dict[str, list[str]]:
    """Rows of the README's configuration table, by the key in the first column."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z0-9_]+)`", cells[0]) if line.startswith("|") else None
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} documented twice"
            rows[match.group(1)] = cells
    return rows


@pytest.mark.parametrize("setting", [f.name for f in dataclasses.fields(Settings)])
def test_settings_are_documented(setting: str) -> None:
    rows = readme_settings_table()
    assert setting in rows, f"setting {setting!r} is missing from README.md's configuration table"
    assert rows[setting][1] == f"`VAULT_{setting.upper()}`"


def test_documented_settings_exist() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    rows = readme_settings_table()
    assert rows, "no configuration table found in README.md"
    assert set(rows) - fields == set(), "README.md documents settings that do not exist"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("65536", 65536),
        ("64K", 64 * 1024),
        ("64kib", 64 * 1024),
        ("10G", 10 * 1024**3),
        ("2T", 2 * 1024**4),
        ("100MB", 100_000_000),
        ("1.5GiB", 1536 * 1024**2),
        (" 7 b ", 7),
        ("123456789012345678901", 123456789012345678901),
    ],
)
def test_parse_size_reads_binary_and_decimal_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "10X", "-1", "1e9", "G", "１０"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def documented_default(setting: dataclasses.Field[Any]) -> str:
    """The default as the README's table writes it: `value`, or (empty)."""
    value = setting.default
    return "(empty)" if value == "" else f"`{value}`"


@pytest.mark.parametrize("setting", dataclasses.fields(Settings), ids=lambda f: f.name)
def test_the_readme_table_gives_each_settings_default(setting: dataclasses.Field[Any]) -> None:
    cell = readme_settings_table()[setting.name][2]
    assert cell.split(" (")[0] == documented_default(setting).split(" (")[0], (setting.name, cell)


def test_the_shipped_config_yaml_restates_the_defaults() -> None:
    """config.yaml is documentation too: a value there that differs from the default (and so
    from the README) changes the server behind the reader's back."""
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert shipped and set(shipped) <= set(defaults)
    for key, value in shipped.items():
        default = defaults[key]
        assert (str(value) if isinstance(default, Path) else value) == (
            str(default) if isinstance(default, Path) else default
        ), f"config.yaml sets {key}: {value}, the default (and README) say {default}"


def test_s3_settings_are_validated(tmp_path: Path) -> None:
    base = {"VAULT_BLOB_STORE": "s3", "VAULT_S3_ENDPOINT": "http://127.0.0.1:9", "VAULT_S3_BUCKET": "b-1"}
    assert load_settings(None, base).blob_store == "s3"
    for key, value, message in [
        ("VAULT_BLOB_STORE", "s4", "'blob_store'"),
        ("VAULT_S3_ENDPOINT", "ftp://x", "'s3_endpoint'"),
        ("VAULT_S3_ENDPOINT", "http://x/path", "'s3_endpoint'"),
        ("VAULT_S3_BUCKET", "Bad_Bucket", "'s3_bucket'"),
        ("VAULT_S3_PREFIX", "a b", "'s3_prefix'"),
        ("VAULT_S3_GC_LEASE", "9", "'s3_gc_lease'"),
        ("VAULT_S3_GC_INTERVAL", "-1", "'s3_gc_interval'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(None, {**base, key: value})


def test_blob_store_s3_without_its_client_names_the_package_and_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from storage import s3

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if requirements-s3.txt were not installed
    with pytest.raises(ConfigError, match=r"needs the package aiohttp: pip install -r requirements-s3.txt"):
        s3._import_aiohttp()
