"""``duma serve`` as a real subprocess on 127.0.0.1 for tests, with scripted minds: the
``fixture_slow`` backend replays each mind's replies word by word, ``delay_s`` apart."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from plugins_fixtures.installer import clean_env, install_fixture_plugins

REPO = Path(__file__).resolve().parents[1]
DUMA = Path(sys.executable).with_name("duma")
READY = re.compile(r"ready on (http://\S+)")
LISTENING = re.compile(r"(?:listening|ready) on (http://[^\s;]+)")


class Server:
    """A running ``duma serve``; ``base_url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, folder: Path,
                 api_key: str | None) -> None:
        self.process = process
        self.base_url = base_url
        self.folder = folder
        self.api_key = api_key

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def output(self) -> str:
        return (self.folder / "stdout.txt").read_text() + (self.folder / "stderr.txt").read_text()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 15.0) -> int:
        self.terminate()
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def scripted_config(folder: Path, fast: Sequence[str], slow: Sequence[str], extra: dict[str, Any] | None = None
                    ) -> Path:
    """A config whose minds are the scripted ``fixture_slow`` backend (``model`` holds the replies)."""
    import json

    config: dict[str, Any] = {
        "agent": {"fast": {"backend": "fixture_slow", "model": json.dumps(list(fast))},
                  "slow": {"backend": "fixture_slow", "model": json.dumps(list(slow))},
                  "tools": ["calculator"]},
        "logging": {"database": str(folder / "logs.db")},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    path = folder / "duma.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_server(tmp_path: Path, *, fast: Sequence[str] = ("Response[Hello there, how can I help?] Invoke[False]",),
                 slow: Sequence[str] = ("Reason[I should add.] Act[calculator(2+2)]", "Finish[2 + 2 = 4]"),
                 delay_s: float = 0.0, args: Sequence[str] = (), env: dict[str, str] | None = None,
                 config: dict[str, Any] | None = None, timeout_s: float = 60.0, wait_ready: bool = True) -> Server:
    """Start ``duma serve --port 0`` with scripted minds and wait for its ready line (or, with
    ``wait_ready=False``, only for the port to be bound)."""
    folder = Path(tmp_path) / f"server-{time.monotonic_ns()}"
    folder.mkdir(parents=True)
    paths = install_fixture_plugins(folder / "site", ["fixture_slow"])
    full_env = clean_env(paths, DUMA_FIXTURE_DELAY_S=str(delay_s), PYTHONUNBUFFERED="1")
    full_env.pop("DUMA_API_KEY", None)
    full_env.update(env or {})
    config_path = scripted_config(folder, fast, slow, config)
    api_key = next((args[i + 1] for i, a in enumerate(args) if a == "--api-key"), None)
    with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
        process = subprocess.Popen([str(DUMA), "--config", str(config_path), "serve", "--port", "0", *args],
                                   stdout=out, stderr=err, env=full_env, cwd=folder)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = (READY if wait_ready else LISTENING).search((folder / "stdout.txt").read_text())
        if found:
            return Server(process, found.group(1), folder, api_key)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    out_text = (folder / "stdout.txt").read_text() + (folder / "stderr.txt").read_text()
    raise RuntimeError(f"duma serve did not become ready (exit {process.returncode}):\n{out_text[-3000:]}")
