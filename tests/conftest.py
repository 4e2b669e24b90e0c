"""Shared fixtures: tiny checkpoints per architecture, built once per test session (per worker)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

from tests.checkpoints import build_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """`checkpoint_factory(variant, dtype="float32")` -> directory of a tiny HF checkpoint (cached)."""
    built = {}

    def make(variant: str, dtype: str = "float32") -> str:
        key = (variant, dtype)
        if key not in built:
            built[key] = build_checkpoint(variant, str(tmp_path_factory.mktemp(f"{variant}-{dtype}")), dtype)
        return built[key]

    return make


@pytest.fixture(scope="session")
def llama_dir(checkpoint_factory):
    return checkpoint_factory("llama")
