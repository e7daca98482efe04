"""Shared fixtures of the model tests (a conftest's helpers are not importable, so they come as fixtures)."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One intra-op thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared 2-core machine two OpenMP threads are many times slower."""
    from glocal.models.extractor_base import torch_threads

    with torch_threads(1):
        yield


def _call_quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="session")
def quiet() -> Callable[..., Any]:
    """``quiet(fn, *args, **kwargs)``: ``fn(*args, **kwargs)`` with its ``UserWarning`` hidden (the
    backbones' "no pretrained weights", the extractors' "RANDOM weights")."""
    return _call_quietly
