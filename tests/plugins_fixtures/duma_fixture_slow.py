"""A backend named 'fixture_slow': scripted replies (``model`` is a JSON list) streamed one
word every ``DUMA_FIXTURE_DELAY_S`` seconds, for tests that stop a process mid-reply; loading takes
``DUMA_FIXTURE_LOAD_S`` seconds (default 0), for tests of a server that is still loading."""

from __future__ import annotations

import os
import time
from typing import Any

from duma import hookimpl


@hookimpl
def register_backends(register: Any) -> None:
    from duma.testing import ScriptedBackend

    class FixtureSlowBackend(ScriptedBackend):
        name = "fixture_slow"

        def __init__(self, spec: Any) -> None:
            time.sleep(float(os.environ.get("DUMA_FIXTURE_LOAD_S", "0")))
            super().__init__(spec, delay_s=float(os.environ.get("DUMA_FIXTURE_DELAY_S", "0.2")))

    register(FixtureSlowBackend)
