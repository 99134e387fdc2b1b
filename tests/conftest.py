"""Shared fixtures: an isolated DUMA_HOME per test, one tiny random model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def duma_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "duma-home"
    monkeypatch.setenv("DUMA_HOME", str(home))
    # The embedded model's safetensors cache is expensive to build: share it across tests.
    monkeypatch.setenv("DUMA_MODEL_CACHE", str(REPO / ".test-cache" / "models"))
    for var in ("DUMA_CONFIG", "DUMA_PLUGINS", "DUMA_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith("DUMA_") and "__" in var:
            monkeypatch.delenv(var)
    from duma import host

    host.reset()
    dist_before = {v: os.environ.get(v) for v in DISTRIBUTED_ENV}
    yield home
    host.reset()
    # An in-process training run sets these for torch.distributed; later subprocesses must
    # not inherit them.
    for var, value in dist_before.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama chat model folder (built once per test session)."""
    from duma.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
