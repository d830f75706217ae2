"""Fixtures for the generator tests: one tiny model built and loaded once per session."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from generator_service.config import GeneratorConfig, load_config
from generator_service.generators import LocalGenerator
from generator_service.model import LoadedModel, load_model
from generator_service.tiny_model import build_tiny_model


@pytest.fixture(autouse=True)
def _clean_generator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings from the caller's shell must not leak into the tests' configs.
    for name in list(os.environ):
        if name.startswith("GENERATOR_") or name in ("MAX_IN_FLIGHT", "MAX_BODY_BYTES"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="package", autouse=True)
def _few_threads() -> Iterator[None]:
    # Two shared cores: one intra-op thread keeps the suite polite. Restored after this package,
    # as the setting is per process and other packages' tests run in the same one.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 with a tokenizer trained on data/, built by the project's code."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-generator") / "model")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path) -> LoadedModel:
    """The tiny model loaded through the service's own loading code, shared read-only."""
    return load_model(str(tiny_model_dir))


@pytest.fixture
def tiny_config(tiny_model_dir: Path) -> Callable[..., GeneratorConfig]:
    """Make a config for the tiny model, with overrides."""

    def make(**overrides: Any) -> GeneratorConfig:
        overrides.setdefault("generator_model", str(tiny_model_dir))
        return load_config(**overrides)

    return make


@pytest.fixture
def make_generator(tiny_loaded: LoadedModel) -> Iterator[Callable[..., LocalGenerator]]:
    """Make a LocalGenerator (own batching loop) on the shared tiny model; stopped afterwards."""
    made: list[LocalGenerator] = []

    def make(**kwargs: Any) -> LocalGenerator:
        generator = LocalGenerator(tiny_loaded, **kwargs)
        made.append(generator)
        return generator

    yield make
    for generator in made:
        generator.close()


class ForwardGate:
    """Holds every forward pass of a model until opened: makes queueing states deterministic."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.fail_next = False

    def hook(self, _module: Any, _args: Any) -> None:
        self.entered.set()
        if not self.opened.wait(timeout=30):
            raise RuntimeError("gate never opened")
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure")

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def forward_gate(tiny_loaded: LoadedModel) -> Iterator[ForwardGate]:
    """A closed gate on the shared model's forward; opened and removed at teardown."""
    gate = ForwardGate()
    handle = tiny_loaded.model.register_forward_pre_hook(gate.hook)
    try:
        yield gate
    finally:
        gate.open()
        with contextlib.suppress(Exception):
            handle.remove()
