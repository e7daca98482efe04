"""HTTP JSON service over one index (``pip install 'glocal[serve]'``, then ``glocal serve my.glx``).

Only :func:`glocal.serve.app.create_app` is public; importing this package does not import FastAPI.
"""
from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from glocal.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'glocal.serve' has no attribute {name!r}")
