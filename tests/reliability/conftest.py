"""Fixtures of the reliability tests: disposable copies of two real goldens."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.policy import Policy

from .reliability_helpers import copy_goldens


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real goldens copied once from the committed store; never modified."""
    return copy_goldens(tmp_path_factory.mktemp("pristine") / "golden")


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pristine goldens a test may tamper with."""
    dst = tmp_path / "golden"
    shutil.copytree(pristine, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def policy() -> Policy:
    return Policy.load(None)
