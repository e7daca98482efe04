"""Settings and segments of the persistent ASMK inverted file (see :mod:`glocal.index.inverted_file`).

Posting entries of an ASMK* segment are stored as one array of records, ``postings`` (E, B + 4) uint8: the
B-byte binary code then the little-endian uint32 item id, so scanning a posting list reads one stream
(index version 2; 20 bytes per entry for 128-bit codes, as before). Version-1 segments, and ASMK segments
(float32 residuals), hold two arrays, ``codes`` (E, B) and ``items`` (E,). :class:`Segment` gives both as
``codes`` and ``items`` (strided views into the records where there are records), so code that reads them
works on both layouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glocal.index.asmk import ALPHA, TAU
from glocal.index.posting_records import record_views
from glocal.index.regional import POOLINGS
from glocal.index.segment_file import ArrayFile, SegmentFileError, file_crc32

AGGREGATIONS = ("asmk", "r-asmk", "regions")


@dataclass(frozen=True)
class IndexSettings:
    """How items are built and scored; fixed when the index is created.

    :param aggregation: ``asmk`` (one item per image), ``r-asmk`` (one regionally aggregated item per image,
        D2R eq. 8-9) or ``regions`` (one item per region, scored by ``pooling``, D2R eq. 3-4).
    :param idf: off by default, as in the reference HOW / FIRe configurations (``use_idf: False``): with the
        selectivity (alpha = 3, tau = 0) and the per-image normalisation gamma, frequent words already
        contribute little, and IDF weights change whenever images are added. When on, the reference asmk
        variant is used: word weight log(N / n_c)^2, gamma(X) = (sum_{c in X} weight_c)^(-1/2).
    :param db_assignments, query_assignments: nearest words per descriptor (reference: 1 and 5).
    :param max_segments: an ``add`` leaving more segments merges the most recent ones.
    """

    binary: bool = True
    aggregation: str = "asmk"
    alpha: float = ALPHA
    tau: float = TAU
    idf: bool = False
    db_assignments: int = 1
    query_assignments: int = 5
    pooling: str = "max"
    max_segments: int = 8

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


class Segment:
    """One committed segment file, memory-mapped."""

    def __init__(self, root: Path, entry: dict, verify: bool) -> None:
        self.entry = entry
        self.file = ArrayFile(root / entry["file"], expected_size=entry["bytes"])
        self.verified = False
        if verify:
            self.verify()
        a = self.file.arrays
        self.words, self.bounds = a["words"], a["bounds"]
        #: (E, B + 4) uint8 records (code, item id) of a version-2 ASMK* segment, else None
        self.postings = a.get("postings")
        if self.postings is not None:
            self.items, self.codes = record_views(self.postings)
        else:
            self.items, self.codes = a["items"], a["codes"]
        self.item_image, self.item_size = a["item_image"], a["item_size"]
        self.item_start = int(entry["item_start"])
        self.n_items = int(entry["items"])

    def verify(self) -> None:
        crc = file_crc32(self.file.path)
        if crc != self.entry["crc32"]:
            raise SegmentFileError(f"{self.file.path}: checksum mismatch (manifest {self.entry['crc32']:#010x}, "
                                   f"file {crc:#010x}): the file is damaged")
        self.verified = True



