"""Shared test fixtures."""

import socket

import pytest


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on, for a multi-process rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
