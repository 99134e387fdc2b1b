"""The plugin host: entry-point discovery, isolation of broken plugins, strict mode, name
clashes, DUMA_PLUGINS filtering, ``duma plugins`` and the example plugin package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from duma import hookimpl, host
from duma.errors import DumaError, PluginError
from duma.types import GenerationOptions, Message, ModelSpec
from plugins_fixtures.installer import install_example_plugin, install_fixture_plugins, run_duma


def warnings_about(stderr: str, plugin: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line and f"'{plugin}'" in line]


def plugin_rows(stdout: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(stdout)}


@pytest.fixture
def fixture_path(tmp_path):
    """Install fixture plugins for a subprocess: returns a function names -> PYTHONPATH parts."""
    def install(*names: str) -> list[str]:
        return install_fixture_plugins(tmp_path / "site", list(names))
    return install


@pytest.fixture
def installed_in_process(tmp_path, monkeypatch):
    """Install fixture plugins for this process (sys.path), then reload the host."""
    def install(*names: str) -> None:
        for entry in install_fixture_plugins(tmp_path / "site", list(names)):
            monkeypatch.syspath_prepend(entry)
        host.reset()
    return install


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """examples/duma-plugin-example pip-installed into a folder of its own (once)."""
    return install_example_plugin(tmp_path_factory.mktemp("example") / "site")


# --- isolation (subprocess: the real CLI, the real entry-point machinery) -------------------

def test_plugin_that_fails_to_import_is_one_warning_and_the_cli_works(fixture_path):
    paths = fixture_path("fixture_broken_import", "fixture_good")
    listed = run_duma(["plugins", "--json"], paths)
    assert listed.returncode == 0, listed.stderr
    [warning] = warnings_about(listed.stderr, "fixture_broken_import")
    assert "ImportError" in warning and "duma_fixture_missing_dependency" in warning
    rows = plugin_rows(listed.stdout)
    assert rows["fixture_broken_import"]["error"].startswith("ImportError")
    assert rows["fixture_broken_import"]["hooks"] == []
    assert rows["fixture_good"]["components"] == {"backend": ["fixture_good"]}

    for args, expected in ((["--help"], "plugins"), (["fixture-good"], "fixture-good ran")):
        result = run_duma(args, paths)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
        assert len(warnings_about(result.stderr, "fixture_broken_import")) == 1
        assert "Traceback" not in result.stderr


def test_debug_shows_the_failing_plugins_traceback(fixture_path):
    result = run_duma(["--debug", "--help"], fixture_path("fixture_broken_import"))
    assert result.returncode == 0
    assert "Traceback" in result.stderr and "duma_fixture_broken_import.py" in result.stderr
    assert len(warnings_about(result.stderr, "fixture_broken_import")) == 1


def test_strict_mode_turns_a_broken_plugin_into_a_one_line_error(fixture_path):
    paths = fixture_path("fixture_broken_import")
    for args in (["plugins"], ["--help"]):
        result = run_duma(args, paths, DUMA_STRICT_PLUGINS="1")
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: plugin 'fixture_broken_import' failed to load (ImportError")
        assert "DUMA_STRICT_PLUGINS" in lines[0]


def test_hook_that_raises_is_skipped_and_its_partial_registrations_dropped(fixture_path):
    paths = fixture_path("fixture_hook_raises", "fixture_good")
    result = run_duma(["plugins", "--json"], paths)
    assert result.returncode == 0, result.stderr
    [warning] = warnings_about(result.stderr, "fixture_hook_raises")
    assert "register_backends" in warning and "RuntimeError: backend registry exploded" in warning
    rows = plugin_rows(result.stdout)
    # Its other hook still counts; the backend it registered before raising does not.
    assert rows["fixture_hook_raises"]["components"] == {"tool": ["fixture_upper"]}
    assert rows["fixture_hook_raises"]["hooks"] == ["register_backends", "register_tools"]
    assert rows["fixture_good"]["components"] == {"backend": ["fixture_good"]}
    assert not any("half_registered" in names for r in rows.values() for names in r["components"].values())

    strict = run_duma(["plugins", "--json"], paths, DUMA_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert strict.stderr.strip().splitlines() == [strict.stderr.strip()]
    assert "plugin 'fixture_hook_raises' raised in register_backends" in strict.stderr


def test_command_hook_that_raises_adds_nothing_and_other_commands_work(fixture_path):
    paths = fixture_path("fixture_command_raises", "fixture_good")
    result = run_duma(["--help"], paths)
    assert result.returncode == 0, result.stderr
    [warning] = warnings_about(result.stderr, "fixture_command_raises")
    assert "register_commands" in warning and "cannot add commands today" in warning
    assert "half-added" not in result.stdout
    assert "fixture-good" in result.stdout and "plugins" in result.stdout


def test_misspelt_hook_is_a_warning(fixture_path):
    result = run_duma(["plugins", "--json"], fixture_path("fixture_typo"))
    assert result.returncode == 0, result.stderr
    [warning] = warnings_about(result.stderr, "fixture_typo")
    assert "'register_tool'" in warning and "not a duma hook" in warning


# --- name clashes --------------------------------------------------------------------------

def test_two_plugins_registering_the_same_backend_name_is_an_error_naming_both(fixture_path):
    paths = fixture_path("fixture_clash_a", "fixture_clash_b")
    result = run_duma(["plugins"], paths)
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "backend 'clash'" in line
    assert "'fixture_clash_a'" in line and "'fixture_clash_b'" in line
    assert "Traceback" not in result.stderr
    # Components are collected lazily: commands that do not need backends still work.
    assert run_duma(["--help"], paths).returncode == 0
    # Limiting plugins resolves it.
    assert run_duma(["plugins"], paths, DUMA_PLUGINS="fixture_clash_a").returncode == 0


def test_two_plugins_adding_the_same_command_is_an_error_naming_both(fixture_path):
    result = run_duma(["--help"], fixture_path("fixture_command_clash"))
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "command 'plugins'" in line and "'fixture_command_clash'" in line


# --- DUMA_PLUGINS ----------------------------------------------------------------------------

def test_duma_plugins_selects_third_party_plugins_and_built_ins_always_load(installed_in_process, monkeypatch,
                                                                          capsys):
    installed_in_process("fixture_good", "fixture_hook_raises", "fixture_typo")

    def listing(value: str | None) -> set[str]:
        if value is None:
            monkeypatch.delenv("DUMA_PLUGINS", raising=False)
        else:
            monkeypatch.setenv("DUMA_PLUGINS", value)
        host.reset()
        return {p.name for p in host.plugins()}

    everything = listing(None)
    builtins = {p.name for p in host.plugins() if p.source == "built-in"}
    assert builtins, "the built-in plugins load through the duma entry-point group"
    assert {"fixture_good", "fixture_hook_raises", "fixture_typo"} <= everything - builtins

    assert listing("fixture_good") == builtins | {"fixture_good"}
    assert listing(" fixture_good , fixture_typo ") == builtins | {"fixture_good", "fixture_typo"}
    assert listing("") == builtins
    # The distribution name works too, spelt as pip would accept it.
    assert listing("duma-fixture-good") == builtins | {"fixture_good"}
    assert listing("Duma_Fixture_Good") == builtins | {"fixture_good"}

    capsys.readouterr()
    a_builtin = sorted(builtins)[0]
    assert listing(f"fixture_good,{a_builtin}") == builtins | {"fixture_good"}
    assert "DUMA_PLUGINS" not in capsys.readouterr().err  # naming a built-in is fine
    assert listing("fixture_good,no_such_plugin") == builtins | {"fixture_good"}
    err = capsys.readouterr().err
    assert "'no_such_plugin'" in err and "not an installed duma plugin" in err


def test_duma_plugins_filters_the_cli(fixture_path):
    paths = fixture_path("fixture_good", "fixture_broken_import")
    result = run_duma(["--help"], paths, DUMA_PLUGINS="fixture_good")
    assert result.returncode == 0 and "fixture-good" in result.stdout
    assert "fixture_broken_import" not in result.stderr  # not selected, so never imported
    result = run_duma(["--help"], paths, DUMA_PLUGINS="")
    assert result.returncode == 0 and "fixture-good" not in result.stdout
    assert "plugins" in result.stdout and result.stderr == ""


# --- duma plugins output ---------------------------------------------------------------------

def test_duma_plugins_table_and_json_describe_every_plugin(fixture_path):
    paths = fixture_path("fixture_good", "fixture_hook_raises")
    result = run_duma(["plugins", "--json"], paths)
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert {"name", "version", "source", "hooks", "components"} <= set(row)
        assert row["source"] in ("built-in", "entry point")
        assert all(h.startswith("register_") for h in row["hooks"])
        for kind, names in row["components"].items():
            assert kind in ("data_source", "trainer", "backend", "quantizer", "router", "tool", "judge", "reward")
            assert names == sorted(names)
    good = plugin_rows(result.stdout)["fixture_good"]
    assert good == {"name": "fixture_good", "version": "0.1.0", "source": "entry point",
                    "hooks": ["register_backends", "register_commands"],
                    "components": {"backend": ["fixture_good"]}}

    table = run_duma(["plugins"], paths, COLUMNS="200")
    assert table.returncode == 0, table.stderr
    for text in ("name", "version", "source", "hooks", "components", "fixture_good", "entry point",
                 "built-in", "register_commands", "backend: fixture_good"):
        assert text in table.stdout


# --- the host API in process -----------------------------------------------------------------

class _Plugin:
    """A plugin object built from keyword hooks, for register_plugin."""

    def __init__(self, **hooks: Any) -> None:
        for name, function in hooks.items():
            setattr(self, name, hookimpl(function))


def _backend(name: str) -> type:
    from duma.testing import ScriptedBackend

    return type(f"B_{name}", (ScriptedBackend,), {"name": name})


def test_register_plugin_and_get(capsys):
    backend = _backend("inproc")
    host.register_plugin(_Plugin(register_backends=lambda register: register(backend)), "inproc")
    assert host.get("backend", "inproc") is backend
    assert host.components("backend")["inproc"].plugin == "inproc"
    assert "inproc" in [p.name for p in host.plugins()]
    assert host.hooks_of("inproc") == ["register_backends"]
    host.unregister_plugin("inproc")
    assert "inproc" not in host.components("backend")
    with pytest.raises(DumaError, match=r"unknown backend 'inproc' \(known backends: "):
        host.get("backend", "inproc")
    with pytest.raises(ValueError, match="unknown component kind"):
        host.components("backends")


def test_register_with_explicit_name_and_same_plugin_twice_is_fine():
    backend = _backend("x")

    def hook(register):
        register(backend, name="alias")
        register(backend, name="alias")

    host.register_plugin(_Plugin(register_backends=hook), "p")
    assert host.get("backend", "alias") is backend


def test_in_process_clash_names_both_plugins():
    host.register_plugin(_Plugin(register_backends=lambda register: register(_backend("same"))), "first")
    host.register_plugin(_Plugin(register_backends=lambda register: register(_backend("same"))), "second")
    with pytest.raises(PluginError) as info:
        host.components("backend")
    message = str(info.value)
    assert "backend 'same'" in message and "'first'" in message and "'second'" in message


def test_in_process_hook_that_raises_warns_once_and_strict_raises(capsys, monkeypatch):
    def broken(register):
        register(_backend("partial"))
        raise KeyError("boom")

    host.register_plugin(_Plugin(register_backends=broken), "broken")
    host.register_plugin(_Plugin(register_backends=lambda register: register(_backend("fine"))), "fine")
    found = host.components("backend")
    assert "fine" in found and "partial" not in found
    host.components("backend")  # cached: no second warning
    err = capsys.readouterr().err
    assert err.count("plugin 'broken' raised in register_backends (KeyError: 'boom')") == 1

    monkeypatch.setenv("DUMA_STRICT_PLUGINS", "1")
    host.unregister_plugin("fine")  # clears the cache
    with pytest.raises(PluginError, match="plugin 'broken' raised in register_backends"):
        host.components("backend")


def test_components_that_break_their_contract_are_plugin_failures(capsys):
    from langchain_core.tools import tool

    @tool
    def ok_tool(text: str) -> str:
        """Echo."""
        return text

    named = type("Named", (), {"name": "named"})
    host.register_plugin(_Plugin(register_backends=lambda register: register(named)), "not_a_backend")
    host.register_plugin(_Plugin(register_tools=lambda register: register(named())), "not_a_tool")
    host.register_plugin(_Plugin(register_tools=lambda register: register(ok_tool)), "good_tool")
    host.register_plugin(_Plugin(register_routers=lambda register: register(object())), "nameless")
    assert "ok_tool" in host.components("tool")
    assert "named" not in host.components("backend")
    assert "nameless" not in {c.plugin for c in host.components("router").values()}
    err = capsys.readouterr().err
    assert "plugin 'not_a_backend'" in err and "duma.backend.Backend" in err
    assert "plugin 'not_a_tool'" in err and "BaseTool" in err
    assert "plugin 'nameless'" in err and "without a name" in err


def test_a_tool_factory_is_built_once_per_agent_from_its_config(tmp_path):
    from langchain_core.tools import tool

    from duma import Agent

    built_for: list[object] = []

    def folder_tool(config):
        built_for.append(config)
        folder = str(config.agent.knowledge_dir)

        @tool
        def which_folder() -> str:
            """Name the agent's knowledge folder."""
            return folder

        return which_folder

    host.register_plugin(_Plugin(register_tools=lambda register: register(folder_tool, name="which_folder")),
                         "factory")
    first = Agent.from_config({"agent": {"knowledge_dir": str(tmp_path / "a")}}, log=False)
    second = Agent.from_config({"agent": {"knowledge_dir": str(tmp_path / "b")}}, log=False)
    assert [c.agent.knowledge_dir for c in built_for] == [tmp_path / "a", tmp_path / "b"]
    assert first.tools["which_folder"].invoke({}) == str(tmp_path / "a")
    assert second.tools["which_folder"].invoke({}) == str(tmp_path / "b")
    assert first.tools["which_folder"] is not second.tools["which_folder"]


def test_register_plugin_rejects_unknown_hooks_and_duplicate_names():
    with pytest.raises(PluginError, match="unknown hooks: register_backend"):
        host.register_plugin(_Plugin(register_backend=lambda register: None), "typo")
    assert "typo" not in [p.name for p in host.plugins()]
    host.register_plugin(_Plugin(register_tools=lambda register: None), "dup")
    with pytest.raises(PluginError, match="already registered"):
        host.register_plugin(_Plugin(register_tools=lambda register: None), "dup")


def test_commands_hook_gets_the_click_group():
    import click

    seen: list[Any] = []
    group = click.Group("scratch")  # not the real CLI: built-in plugins add to it too
    host.register_plugin(_Plugin(register_commands=lambda cli: seen.append(cli)), "cmds")
    host.call_hook_isolated("register_commands", cli=group)
    assert seen == [group]
    assert "cmds" in [plugin for plugin, _ in host.hook_implementations("register_commands")]


# --- the example plugin package --------------------------------------------------------------

def test_example_plugin_is_listed_as_an_entry_point(example_site):
    result = run_duma(["plugins", "--json"], [str(example_site)])
    assert result.returncode == 0, result.stderr
    example = plugin_rows(result.stdout)["example"]
    assert example["source"] == "entry point"
    assert example["version"] == "0.1.0"
    assert example["hooks"] == ["register_backends", "register_commands", "register_tools"]
    assert example["components"] == {"backend": ["echo"], "tool": ["word_count"]}


def test_example_plugin_command_runs(example_site):
    result = run_duma(["hello", "--name", "Ada"], [str(example_site)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello, Ada! (from duma-plugin-example)"
    assert "hello" in run_duma(["--help"], [str(example_site)]).stdout
    # Not installed, not there: the example leaves the venv alone.
    assert "hello" not in run_duma(["--help"]).stdout


@pytest.fixture
def example_in_process(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    host.reset()
    yield
    host.reset()


def test_example_echo_backend_streams_with_usage_and_timings(example_in_process):
    backend_cls = host.get("backend", "echo")
    assert host.components("backend")["echo"].plugin == "example"
    backend = backend_cls(ModelSpec(backend="echo", model="echo"))
    messages = [Message(role="system", content="be brief"), Message(role="user", content="first"),
                Message(role="assistant", content="ok"), Message(role="user", content="hello there duma")]
    chunks = list(backend.stream(messages))
    assert "".join(c.text for c in chunks) == "hello there duma"
    assert len(chunks) == 4 and [c.done for c in chunks] == [False, False, False, True]
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage.completion_tokens == 3
    assert last.timings.first_token_s is not None and last.timings.total_s >= last.timings.first_token_s

    short = backend.generate(messages, GenerationOptions(max_tokens=2))
    assert short.text == "hello there" and short.finish_reason == "length"
    stopped = backend.generate(messages, GenerationOptions(stop=[" duma"]))
    assert stopped.text == "hello there"


def test_example_tool_is_found_and_runs(example_in_process):
    word_count = host.get("tool", "word_count")
    assert host.components("tool")["word_count"].plugin == "example"
    assert word_count.invoke({"text": "one two  three"}) == "3"
    assert "Count the words" in word_count.description
