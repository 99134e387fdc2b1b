"""Install the fixture plugins (and the example plugin) the way pip would, for tests.

A distribution is found by ``importlib.metadata`` through a ``NAME-VERSION.dist-info`` folder
on ``sys.path``; its ``entry_points.txt`` declares the ``duma`` entry point. Writing that
folder into a temporary directory is all an "install" takes, and leaves the venv untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent
REPO = FIXTURES.parents[1]
EXAMPLE = REPO / "examples" / "duma-plugin-example"

# entry-point name -> module, for every fixture plugin in this folder
FIXTURE_PLUGINS = {
    "fixture_broken_import": "duma_fixture_broken_import",
    "fixture_hook_raises": "duma_fixture_hook_raises",
    "fixture_command_raises": "duma_fixture_command_raises",
    "fixture_good": "duma_fixture_good",
    "fixture_clash_a": "duma_fixture_clash_a",
    "fixture_clash_b": "duma_fixture_clash_b",
    "fixture_command_clash": "duma_fixture_command_clash",
    "fixture_typo": "duma_fixture_typo",
    "fixture_slow": "duma_fixture_slow",
}


def write_distribution(target: Path, dist: str, entry_points: dict[str, str], version: str = "0.1.0") -> Path:
    """Write the metadata of an installed distribution with ``duma`` entry points."""
    info = target / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text("[duma]\n" + lines)
    return info


def install_fixture_plugins(target: Path, names: list[str]) -> list[str]:
    """Install fixture plugins into ``target``; returns the folders to put on the path."""
    for name in names:
        write_distribution(target, "duma-" + name.replace("_", "-"), {name: FIXTURE_PLUGINS[name]})
    return [str(target), str(FIXTURES)]


def install_example_plugin(target: Path) -> Path:
    """``pip install`` examples/duma-plugin-example into ``target`` (not into the venv, so
    other tests do not see its components); returns ``target``."""
    source = target.parent / "example-source"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return target


def clean_env(paths: list[str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a ``duma`` subprocess: no inherited plugin settings, ``paths``
    first on PYTHONPATH, then ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DUMA_PLUGINS", "DUMA_STRICT_PLUGINS", "DUMA_CONFIG", "PYTHONPATH")
           and not (k.startswith("DUMA_") and "__" in k)}
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def run_duma(args: list[str], paths: list[str] | None = None, timeout: float = 120, **extra: str
             ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m duma ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "duma", *args], capture_output=True, text=True,
                          env=clean_env(paths, **extra), timeout=timeout, cwd=str(REPO))
