"""Posting entries of an ASMK* segment as records (index version 2, :mod:`glocal.index.layout`): each
entry's B-byte binary code, then its item id as a little-endian uint32, in one (E, B + 4) uint8 array."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt


def interleave(items: npt.NDArray, codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(E, B + 4) records: each entry's B-byte code, then its item id as little-endian uint32."""
    out = np.empty((len(items), codes.shape[1] + 4), np.uint8)
    record_views(out)[0][:] = items
    out[:, :codes.shape[1]] = codes
    return out


def record_views(postings: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """(items (E,) uint32, codes (E, B) uint8): strided views into (E, B + 4) records, no copy."""
    width = postings.shape[1] - 4
    if len(postings) == 0:
        return np.zeros(0, np.uint32), np.zeros((0, width), np.uint8)
    return postings[:, width:].view("<u4")[:, 0], postings[:, :width]
