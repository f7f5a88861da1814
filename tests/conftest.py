"""Shared test fixtures."""

import socket

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The models under test are tiny: one thread is as fast as two, and on a shared 2-core machine spin-waiting
    OpenMP threads made the diffusion tests several times slower. Multi-process tests start their own interpreters."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Reference models (originals, retrain oracles) and generations are cached in a per-session directory, never
    in the user's ~/.cache: tests start cold and leave nothing behind."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONCEPT_ERASE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on, for a multi-process rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
