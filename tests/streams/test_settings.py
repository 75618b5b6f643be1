from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import CHAIN_ID, Settings, SettingsError


def test_defaults() -> None:
    s = Settings.load(env={})
    assert s.embedded and s.kafka is None
    assert (s.rpc_port, s.ws_port, s.chain_id) == (8545, 8546, CHAIN_ID)
    assert s.data_dir == Path(".lattice")


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "lattice.toml"
    config.write_text(
        'kafka = "file:9092"\nrpc_port = 1000\nws_port = 1001\n'
        '[kafka_config]\n"security.protocol" = "PLAINTEXT"\n'
    )
    s = Settings.load(
        config_file=config,
        env={"LATTICE_RPC_PORT": "2000", "LATTICE_WS_PORT": "2001"},
        overrides={"ws_port": 3001, "kafka": None},
    )
    assert s.kafka == "file:9092"
    assert s.rpc_port == 2000
    assert s.ws_port == 3001
    assert s.kafka_config == {"security.protocol": "PLAINTEXT"}
    assert not s.embedded


def test_limits_from_the_file_and_the_environment(tmp_path: Path) -> None:
    defaults = Settings.load(env={})
    assert (defaults.max_log_range, defaults.max_log_results) == (10_000, 10_000)
    assert (defaults.rate_limit, defaults.max_body_bytes) == (50.0, 5 * 1024 * 1024)
    config = tmp_path / "lattice.toml"
    config.write_text("max_log_range = 500\nrate_burst = 7\n")
    s = Settings.load(config_file=config, env={"LATTICE_RATE_LIMIT": "2.5"})
    assert (s.max_log_range, s.rate_burst, s.rate_limit) == (500, 7, 2.5)


def test_data_dir_settings_file_is_picked_up(tmp_path: Path) -> None:
    (tmp_path / "lattice.toml").write_text("rpc_port = 9999\n")
    assert Settings.load(env={}, overrides={"data_dir": tmp_path}).rpc_port == 9999


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"LATTICE_RPC_PORT": "http"}, "rpc_port"),
    ],
)
def test_bad_env_values_name_the_setting(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.load(env=env)


def test_unknown_file_setting_and_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "a.toml"
    bad.write_text("rpc_prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'rpc_prot'"):
        Settings.load(config_file=bad, env={})
    bad.write_text("rpc_port = [\n")
    with pytest.raises(SettingsError, match="cannot read settings file"):
        Settings.load(config_file=bad, env={})
    bad.write_text("rpc_port = true\n")
    with pytest.raises(SettingsError, match="rpc_port"):
        Settings.load(config_file=bad, env={})
