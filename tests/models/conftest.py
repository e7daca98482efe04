"""Shared fixtures of the model tests (a conftest's helpers are not importable, so they come as fixtures)."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest


def _call_quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="session")
def quiet() -> Callable[..., Any]:
    """``quiet(fn, *args, **kwargs)``: ``fn(*args, **kwargs)`` with its ``UserWarning`` hidden (the
    backbones' "no pretrained weights", the extractors' "RANDOM weights")."""
    return _call_quietly
