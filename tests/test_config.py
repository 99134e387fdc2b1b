"""Layered configuration: YAML, then environment variables, then CLI flags; errors name the
key path, where the value came from (file:line, environment variable, command line) and
what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from duma.config import DumaConfig, config_from, env_overrides, load_config, read_yaml
from duma.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "duma.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(**kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return info.value


# --- layers --------------------------------------------------------------------------------

def test_defaults_without_file_or_environment():
    config = load_config(environ={})
    assert config == DumaConfig()
    assert config.model.backend == "auto" and config.model.model == "embedded"
    assert config.agent.max_slow_steps == 6 and config.log_level == "warning"


def test_yaml_then_environment_then_flags(tmp_path):
    path = write(tmp_path, "agent:\n  router: rules\n  max_slow_steps: 4\n  memory_turns: 9\n"
                           "model:\n  options:\n    temperature: 0.5\n")
    environ = {"DUMA_AGENT__MAX_SLOW_STEPS": "5", "DUMA_AGENT__ROUTER": "always",
               "DUMA_MODEL__OPTIONS__MAX_TOKENS": "64"}
    config = load_config(path, overrides={"agent": {"router": "never"}}, environ=environ)
    assert config.agent.router == "never"          # flag beats environment and file
    assert config.agent.max_slow_steps == 5        # environment beats file
    assert config.agent.memory_turns == 9          # file beats defaults
    assert config.model.options.temperature == 0.5  # a sibling of an overridden key is kept
    assert config.model.options.max_tokens == 64
    assert config.chat.stream is True              # untouched default


def test_duma_config_names_the_file(tmp_path):
    path = write(tmp_path, "log_level: info\n")
    assert load_config(environ={"DUMA_CONFIG": str(path)}).log_level == "info"
    # An explicit path wins over DUMA_CONFIG.
    other = write(tmp_path, "log_level: error\n", "other.yaml")
    assert load_config(other, environ={"DUMA_CONFIG": str(path)}).log_level == "error"


def test_environment_values_are_read_by_what_the_key_takes():
    environ = {
        "DUMA_AGENT__MAX_SLOW_STEPS": "3",
        "DUMA_AGENT__SLOW_TIMEOUT_S": "2.5",
        "DUMA_CHAT__STREAM": "false",
        "DUMA_CHAT__SYSTEM": "yes",                 # text where the key takes text
        "DUMA_MODEL__MODEL": "123",
        "DUMA_AGENT__TOOLS": "calculator, units",   # a list: comma-separated ...
        "DUMA_AGENT__ROUTER_OPTIONS": "{threshold: 0.4}",
        "DUMA_MODEL__OPTIONS__SEED": "null",
        "DUMA_MODEL__OPTIONS__STOP": "[END, '###']",  # ... or YAML
        "DUMA_LOG_LEVEL": "debug",                   # the one top-level key
        "DUMA_HOME": "/somewhere", "DUMA_PLUGINS": "", "DUMA_STRICT_PLUGINS": "1",  # not config
    }
    config = load_config(environ=environ)
    assert config.agent.max_slow_steps == 3 and config.agent.slow_timeout_s == 2.5
    assert config.chat.stream is False and config.chat.system == "yes"
    assert config.model.model == "123"
    assert config.agent.tools == ["calculator", "units"]
    assert config.agent.router_options == {"threshold": 0.4}
    assert config.model.options.seed is None and config.model.options.stop == ["END", "###"]
    assert config.log_level == "debug"


def test_env_overrides_parses_yaml_scalars():
    assert env_overrides({"DUMA_AGENT__MAX_SLOW_STEPS": "3", "DUMA_HOME": "x", "OTHER__X": "1"}) == {
        "agent": {"max_slow_steps": 3}}


def test_config_from_accepts_objects_dicts_paths_and_none(tmp_path, monkeypatch):
    config = DumaConfig()
    assert config_from(config) is config
    assert config_from({"agent": {"router": "rules"}}).agent.router == "rules"
    assert config_from(write(tmp_path, "log_level: info\n")).log_level == "info"
    monkeypatch.setenv("DUMA_AGENT__ROUTER", "always")
    assert config_from(None).agent.router == "always"


def test_minds_default_to_the_top_level_model():
    config = load_config(overrides={"model": {"model": "/models/a"}, "agent": {"slow": {"model": "/models/b"}}},
                         environ={})
    assert config.mind("fast").model == "/models/a"
    assert config.mind("slow").model == "/models/b"


def test_empty_yaml_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing yet\n"), environ={}) == DumaConfig()


# --- errors ----------------------------------------------------------------------------------

def test_unknown_yaml_key_names_file_line_path_and_allowed_keys(tmp_path):
    path = write(tmp_path, "agent:\n  router: rules\n  max_slow_stepz: 3\n")
    error = error_of(path=path, environ={})
    assert error.message == f"{path}:3: agent.max_slow_stepz: unknown key"
    assert "allowed keys:" in error.hint and "max_slow_steps" in error.hint
    assert error.exit_code == 2


def test_unknown_key_inside_an_optional_section_lists_that_section(tmp_path):
    path = write(tmp_path, "agent:\n  fast:\n    model: embedded\n    prompt: hi\n")
    error = error_of(path=path, environ={})
    assert error.message == f"{path}:4: agent.fast.prompt: unknown key"
    assert "system_prompt" in error.hint and "backend" in error.hint


def test_bad_yaml_value_says_what_is_allowed(tmp_path):
    path = write(tmp_path, "agent:\n  max_slow_steps: 500\nlog_level: loud\n")
    error = error_of(path=path, environ={})
    assert f"{path}:2: agent.max_slow_steps: must be <= 100 (got 500)" in error.message
    assert f"{path}:3: log_level: must be one of 'debug', 'info', 'warning' or 'error' (got 'loud')" in error.message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "agent:\n  router: rules\n  tools: [calculator\nlog_level: info\n")
    error = error_of(path=path, environ={})
    assert error.message.startswith(f"{path}:4: invalid YAML")
    assert "fix the syntax" in error.hint


def test_yaml_that_is_not_a_mapping(tmp_path):
    error = error_of(path=write(tmp_path, "- a\n- b\n"), environ={})
    assert "the top level must be a mapping" in error.message


def test_missing_config_file(tmp_path):
    error = error_of(path=tmp_path / "nope.yaml", environ={})
    assert "does not exist" in error.message and "DUMA_CONFIG" in error.hint
    assert read_yaml(write(tmp_path, "a: 1\n")) == {"a": 1}


def test_environment_error_names_the_variable(tmp_path):
    path = write(tmp_path, "agent:\n  max_slow_steps: 4\n")
    error = error_of(path=path, environ={"DUMA_AGENT__MAX_SLOW_STEPS": "lots"})
    assert error.message == (
        "environment DUMA_AGENT__MAX_SLOW_STEPS: agent.max_slow_steps: "
        "must be an integer (got 'lots')"
    )
    error = error_of(environ={"DUMA_AGENT__MAX_SLOW_STEPS": "0"})
    assert error.message.startswith("environment DUMA_AGENT__MAX_SLOW_STEPS: agent.max_slow_steps: "
                                    "must be >= 1")


def test_unknown_environment_key_names_the_variable():
    error = error_of(environ={"DUMA_AGENT__ROUTR": "rules"})
    assert error.message == "environment DUMA_AGENT__ROUTR: agent.routr: unknown key"
    assert "router" in error.hint
    error = error_of(environ={"DUMA_NOSUCH__KEY": "1"})
    assert error.message == "environment DUMA_NOSUCH__KEY: nosuch: unknown key"


def test_flag_errors_name_the_command_line():
    error = error_of(overrides={"agent": {"max_slow_steps": 0}}, environ={})
    assert error.message.startswith("command line: agent.max_slow_steps: must be >= 1 (got 0)")
    error = error_of(overrides={"model": {"dtype": "int3"}}, environ={}, overrides_source="--dtype")
    assert error.message.startswith("--dtype: model.dtype: must be one of")
    error = error_of(overrides={"agent": {"nope": 1}}, environ={})
    assert error.message == "command line: agent.nope: unknown key"


def test_the_layer_that_set_the_value_is_named(tmp_path):
    path = write(tmp_path, "agent:\n  max_slow_steps: 500\n")
    # Fixed by the environment: no error from the file.
    assert load_config(path, environ={"DUMA_AGENT__MAX_SLOW_STEPS": "5"}).agent.max_slow_steps == 5
    # Broken by a flag: the flag is named, not the file.
    error = error_of(path=path, overrides={"agent": {"max_slow_steps": 0}}, environ={})
    assert error.message.startswith("command line: agent.max_slow_steps")


# --- duma config show / schema ---------------------------------------------------------------

def _invoke(args: list[str], **env: str):
    from duma.cli import cli

    return CliRunner().invoke(cli, args, env=env or None, catch_exceptions=False)


def test_config_show_prints_the_effective_configuration(tmp_path):
    path = write(tmp_path, "agent:\n  router: rules\n")
    result = _invoke(["--config", str(path), "-S", "agent.max_slow_steps=2", "config", "show"],
                     DUMA_CHAT__SYSTEM="Be brief.")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["agent"]["router"] == "rules" and shown["agent"]["max_slow_steps"] == 2
    assert shown["chat"]["system"] == "Be brief."
    assert DumaConfig.model_validate(shown)  # what it prints is a valid config file

    as_json = _invoke(["--config", str(path), "config", "show", "--json"])
    assert json.loads(as_json.output)["agent"]["router"] == "rules"


def test_config_schema_is_the_json_schema():
    result = _invoke(["config", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema == DumaConfig.model_json_schema()
    assert {"model", "chat", "agent", "logging", "log_level"} <= set(schema["properties"])
