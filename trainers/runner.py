"""Reading a run config (YAML + ``key=value`` overrides), picking its trainer, and running it
in this process or launching several (``--nproc``) or several nodes (``--hostfile``).

Every check on the input (unknown keys, missing files, bad records, an occupied output folder)
runs here, in the launching process, before DeepSpeed starts anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from duma.errors import ConfigError, DumaError
from duma.trainers.config import RunConfig


def parse_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not key=value", "write e.g. training.lr=1e-4")
        pairs.append((key.strip(), value))
    return pairs


def trainer_class(method: str) -> Any:
    from duma import host

    return host.get("trainer", method)


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                    data: dict[str, Any] | None = None) -> tuple[Any, RunConfig]:
    """(trainer class, validated config) from a YAML file and/or a dict, then overrides.
    Relative data paths that do not exist from the working folder are tried from the
    config file's folder."""
    from duma.config import read_yaml, set_path, validate_model

    raw: dict[str, Any] = read_yaml(Path(path)) if path else {}
    if data:
        from duma.config import merge

        raw = merge(raw, data)
    for key, value in parse_overrides(overrides):
        set_path(raw, key, value)
    source = str(path) if path else None
    method = raw.get("method")
    if not isinstance(method, str) or not method:
        from duma import host

        known = ", ".join(sorted(host.components("trainer"))) or "none"
        raise ConfigError(f"{source + ': ' if source else ''}method: missing", f"set method to one of: {known}")
    cls = trainer_class(method)
    if path and isinstance(raw.get("data"), dict) and isinstance(raw["data"].get("files"), list):
        base = Path(path).resolve().parent
        raw["data"]["files"] = [
            str(base / f) if isinstance(f, str) and not Path(f).is_absolute() and not Path(f).exists()
            and (base / f).exists() else f
            for f in raw["data"]["files"]]
    return cls, validate_model(cls.config_class, raw, source)


def build_trainer(path: str | Path | None = None, overrides: Sequence[str] = (), *, data: dict[str, Any] | None = None,
                  resume: bool = False, overwrite: bool = False, quiet: bool = True) -> Any:
    """The trainer of a run config; ``quiet=False`` lets DeepSpeed and transformers talk."""
    cls, config = load_run_config(path, overrides, data)
    return cls(config, resume=resume, overwrite=overwrite, quiet=quiet)


def train(path: str | Path | None = None, overrides: Sequence[str] = (), *, data: dict[str, Any] | None = None,
          resume: bool = False, overwrite: bool = False, quiet: bool = True) -> dict[str, Any]:
    """Run a training job in this process (Python API); returns the run summary."""
    trainer = build_trainer(path, overrides, data=data, resume=resume, overwrite=overwrite, quiet=quiet)
    trainer.prepare()
    return trainer.run()


def launch(config_path: str, overrides: Sequence[str], *, nproc: int, hostfile: str | None,
           resume: bool, overwrite: bool, as_json: bool = False, quiet: bool = True) -> int:
    """Check everything here, then start the worker processes; returns their exit code.
    Rank 0 prints the summary (as JSON with ``as_json``)."""
    from duma.trainers.base import LAUNCHED_ENV, STARTED_AT_ENV

    started_at = time.time()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other", "pass one of them")
    if hostfile and not Path(hostfile).is_file():
        raise DumaError(f"hostfile {hostfile} does not exist", "give a DeepSpeed hostfile ('host slots=N' lines)")
    trainer = build_trainer(config_path, overrides, resume=resume, overwrite=overwrite, quiet=quiet)
    trainer.prepare()
    trainer.start_output_dir()
    cmd = launch_command(config_path, overrides, nproc=nproc, hostfile=hostfile, resume=resume,
                         as_json=as_json, debug=not quiet)
    env = dict(os.environ)
    env.pop(LAUNCHED_ENV, None)
    env[STARTED_AT_ENV] = str(started_at)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if quiet:  # gloo's "connected to N peer ranks" lines
        env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    if not hostfile:
        return subprocess.call(cmd, env=env)
    env_file = node_env_file(env)
    try:
        return subprocess.call(cmd, env={**env, "DS_ENV_FILE": env_file})
    finally:
        os.unlink(env_file)


# DeepSpeed's launcher passes only PYTHON*/MLFLOW*/UCX*/MV2* variables to the other nodes (over
# ssh, which starts from a clean environment); these too reach the workers there.
NODE_ENV_PREFIXES = ("DUMA_", "TORCH_", "OMP_", "HF_", "TRANSFORMERS_")


def node_env_file(env: dict[str, str]) -> str:
    """A temporary DeepSpeed environment file (``DS_ENV_FILE``: KEY=VALUE lines, exported on
    every node before the workers start): the user's own ``.deepspeed_env`` lines, then the
    variables of ``NODE_ENV_PREFIXES`` that can be written there safely."""
    import tempfile

    lines: list[str] = []
    name = os.environ.get("DS_ENV_FILE", ".deepspeed_env")
    for folder in (os.path.expanduser("~"), "."):
        own = Path(folder, name)
        if own.is_file():
            lines += [ln for ln in own.read_text().splitlines() if "=" in ln]
    unsafe = set('"$`\\\n')
    lines += [f"{key}={value}" for key, value in sorted(env.items())
              if key.startswith(NODE_ENV_PREFIXES) and value and not unsafe & set(value)]
    fd, path = tempfile.mkstemp(prefix="duma-deepspeed-env-")
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    return path


def launch_command(config_path: str, overrides: Sequence[str], *, nproc: int, hostfile: str | None,
                   resume: bool, as_json: bool = False, debug: bool = False) -> list[str]:
    """The launcher command line: torchrun for processes on this machine; DeepSpeed's
    launcher (pdsh/ssh to each host of the hostfile) for several nodes."""
    from duma.trainers.base import free_port

    # --worker (not an environment variable: DeepSpeed's launcher does not pass those to
    # other nodes) tells the workers that this process already did the checks.
    worker = (["duma", *(["--debug"] if debug else []), "train", str(config_path), *overrides, "--worker"]
              + (["--resume"] if resume else []) + (["--json"] if as_json else []))
    port = str(free_port())
    if hostfile:
        if not Path(hostfile).is_file():
            raise DumaError(f"hostfile {hostfile} does not exist", "give a DeepSpeed hostfile ('host slots=N' lines)")
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_local_rank",
                "--master_port", port, *(["--num_gpus", str(nproc)] if nproc > 1 else []), "--module", *worker]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={port}", "-m", *worker]
