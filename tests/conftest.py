"""Shared test fixtures and the test markers.

Markers (declared in pyproject.toml):

- ``slow``: takes more than a few seconds (multi-process runs, killed-and-resumed pipelines, benchmarks, diffusion
  conformance runs). CI runs everything, slow tests included, one worker per core: ``python -m pytest -q -n auto``. The quick developer loop
  leaves them out: ``python -m pytest -q -m "not slow"``.
- ``gpu``: needs a CUDA device; skipped, with the reason, when ``torch.cuda.is_available()`` is false.
"""

import socket

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests on a machine without CUDA (checked once, only when some are collected)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_tests and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="gpu: needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu_tests:
            item.add_marker(skip)


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


# digits, class 3 and an MLP trained on all of digits: shared by the classifier method tests
@pytest.fixture(scope="session")
def splits():
    from classifiers.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def task(splits):
    from classifiers.data import make_task

    return make_task(splits, "class:3")


@pytest.fixture(scope="session")
def trained(splits):
    """The original model, trained once: an MLP on all of digits (10 epochs of the default recipe)."""
    from classifiers.models import ModelConfig
    from classifiers.training import TrainConfig, fresh_model, train_recipe

    model = fresh_model(ModelConfig("mlp"), splits.num_classes, splits.input_shape, seed=0)
    train_recipe(model, splits.train, TrainConfig(epochs=10))
    return model.eval()
