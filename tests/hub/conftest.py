"""A real local Hub server (tests/hub_server.py) on 127.0.0.1, and huggingface_hub pointed at it.

huggingface_hub reads ``HF_ENDPOINT``/``HF_HUB_OFFLINE``/``HF_HOME`` when it is imported (the root conftest makes
the suite offline), so the ``hub`` fixture sets both the environment (for subprocesses) and the already-read
constants (for this process), with a temporary ``HF_HOME`` and a dummy token the server accepts.
"""

from __future__ import annotations

import itertools

import pytest
from huggingface_hub import constants

from tests.hub_server import LocalHub

_names = itertools.count()


@pytest.fixture(scope="session")
def local_hub():
    server = LocalHub().start()
    yield server
    server.stop()


@pytest.fixture
def hub(local_hub, tmp_path, monkeypatch):
    """The server, with this process and its subprocesses pointed at it (online, a fresh cache, a valid token)."""
    home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": local_hub.url,
        "HF_TOKEN": local_hub.token,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", local_hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    local_hub.clear_faults()
    yield local_hub
    local_hub.clear_faults()


@pytest.fixture
def repo_name():
    """A fresh repo name per test (the server lives for the whole session)."""
    return f"pruned-{next(_names)}"
