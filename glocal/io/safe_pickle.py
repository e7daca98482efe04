"""A restricted unpickler for ground-truth files: only builtins containers and numpy arrays.

The revisited Oxford/Paris ground truth ships as pickles. A plain ``pickle.load`` runs any code the file
names; this loader admits only the globals needed to rebuild dicts, lists, tuples, numbers, strings and
numpy arrays / scalars, and refuses everything else with an error naming the file and the global.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from glocal.errors import BadInputError

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"),
    ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "bool"),
    ("builtins", "slice"), ("builtins", "range"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class UnsafePickleError(BadInputError, pickle.UnpicklingError):
    """The pickle asked for a global outside the allowed list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refuses to load global '{module}.{name}' "
            "(only builtins containers and numpy arrays are allowed)"
        )


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle file admitting only builtins and numpy arrays.

    :raises UnsafePickleError: the file references any other global.
    """
    path = Path(path)
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, str(path)).load()


def safe_loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Like :func:`safe_load_pickle` for bytes in memory."""
    return _RestrictedUnpickler(io.BytesIO(data), source).load()
