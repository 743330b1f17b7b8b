"""The real vLLM server the ``vllm`` tests run against: one per test session, shared by every test
module that imports ``vllm_server`` (a module-level singleton, so two modules importing the fixture
still start one server).

It serves the embedded SmolLM2-135M-Instruct (the materialised folder in the user cache) from
``.venv-vllm`` (built by ``make vllm``, which ``make test`` runs first) with the CPU flags of
``rain_core.engines.vllm.launch.CPU_FLAGS`` on a free loopback port. Without ``.venv-vllm`` the
tests fail with a message saying to run ``make vllm``: they are not skipped, so a CI run that
forgot it shows up as a failure.

``RAIN_VLLM_TEST_URL=http://127.0.0.1:PORT/v1`` runs the tests against a server already running
(started with ``scripts/vllm_server.sh start PORT``, which serves the same model as "smollm2")."""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("RAIN_VLLM_VENV", ROOT / ".venv-vllm"))
PYTHON = VENV / "bin" / "python"
SERVED_NAME = "smollm2"

_lock = threading.Lock()
_server = None
_error: str | None = None


def _stop() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


class ExternalServer:
    """A server someone else started (``RAIN_VLLM_TEST_URL``); stopping it is theirs to do."""

    def __init__(self, base_url: str) -> None:
        from rain_core.loaders.embedded import materialize_default_model

        self.base_url = base_url.rstrip("/")
        self.name = SERVED_NAME
        self.model = materialize_default_model()
        self.log_path = None

    def stop(self) -> None:
        pass


def shared_server():
    """The session's server, started on first use (a ``pytest.fail`` when it cannot start)."""
    global _server, _error
    from rain_core.engines.vllm.launch import LocalVLLMServer
    from rain_core.loaders.embedded import materialize_default_model

    with _lock:
        if _error is not None:
            pytest.fail(_error)
        if _server is None and os.environ.get("RAIN_VLLM_TEST_URL"):
            _server = ExternalServer(os.environ["RAIN_VLLM_TEST_URL"])
        if _server is None:
            if not PYTHON.exists():
                _error = (
                    f"{PYTHON} is missing: the vllm tests need the vLLM virtualenv; run `make vllm` "
                    "(make test builds it first)"
                )
                pytest.fail(_error)
            server = LocalVLLMServer(PYTHON, materialize_default_model(), name=SERVED_NAME)
            try:
                server.start(timeout=float(os.environ.get("RAIN_VLLM_START_TIMEOUT", "420")))
            except Exception as exc:  # ServerStartError, or the venv broken
                _error = f"could not start the vLLM test server: {exc}"
                pytest.fail(_error)
            _server = server
            atexit.register(_stop)
        return _server


@pytest.fixture(scope="session")
def vllm_server():
    """The running ``LocalVLLMServer`` (``.base_url``, ``.name``, ``.log_path``)."""
    server = shared_server()
    yield server
    _stop()


@pytest.fixture(scope="session")
def vllm_base_url(vllm_server) -> str:
    return vllm_server.base_url
