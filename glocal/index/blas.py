"""Keep numpy's OpenBLAS single-threaded inside loops of small matrix products.

OpenBLAS threads every product above a small size. A loop of many small products (one per coarse cell in
:mod:`glocal.index.quantizer`) then spends its time handing work to BLAS threads, and on a loaded 2-core
machine one call took seconds instead of milliseconds (measured). OpenBLAS 0.3.27+ exports
``openblas_set_num_threads_local``, which sets the thread count of the *calling* thread only, so limiting
it has no effect on other threads. Where numpy uses another BLAS, or an older OpenBLAS, this is a no-op.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache


@lru_cache(maxsize=1)
def _local_setter() -> Callable[[int], int] | None:
    """``openblas_set_num_threads_local`` of the OpenBLAS loaded in this process, if any."""
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: ("numpy" not in p, p)):  # numpy's own BLAS first
        if not path.startswith("/"):
            continue
        try:
            lib = ctypes.CDLL(path)
            fn = lib.openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    return None


@contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    """Run the block with at most ``n`` OpenBLAS threads for calls made from this thread."""
    fn = _local_setter()
    if fn is None:
        yield
        return
    previous = fn(int(n))
    try:
        yield
    finally:
        fn(previous if previous > 0 else 0)
