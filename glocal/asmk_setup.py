"""The ASMK shortlist of a new index: its codebook, trained (k-means) or reused from another index, and its
fast quantizer.

:func:`descriptor_sample` draws the k-means training sample from a feature file; :func:`create_asmk_shortlist`
trains the codebook (``glocal.index.codebook.train_codebook``), calibrates the two-level quantizer and
creates the empty inverted file; :func:`codebook_donor` takes both from an existing index of the same method
instead (train once, build many: e.g. ROxf and ROxf + R1M on one codebook).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glocal.index.codebook import Codebook, train_codebook
from glocal.index.inverted_file import InvertedFile
from glocal.index.manifest import IndexFormatError
from glocal.index.quantizer import CoarseQuantizer
from glocal.index.segment_file import SegmentFileError
from glocal.io.feature_file import FeatureFile
from glocal.progress import Progress
from glocal.shortlists import AsmkShortlist

#: Lloyd iterations of codebook training
KMEANS_ITERATIONS = 10
#: held-out descriptors on which the fast quantizer is calibrated
CALIBRATION_DESCRIPTORS = 5000

Donor = tuple[Codebook, CoarseQuantizer | None, dict]


def descriptor_sample(features: FeatureFile, per_image: int, seed: int) -> npt.NDArray[np.float32]:
    """At most ``per_image`` local descriptors of every image (seeded random choice), concatenated."""
    rng = np.random.default_rng(seed)
    parts = []
    for f in features:
        d = f.descriptors
        if len(d) > per_image:
            d = d[np.sort(rng.choice(len(d), per_image, replace=False))]
        parts.append(np.asarray(d, np.float32))
    if not parts or sum(len(p) for p in parts) == 0:
        raise ValueError(f"{features.path}: no local features to train a codebook on (all images failed?)")
    return np.concatenate(parts)


def create_asmk_shortlist(out: Path, manifest: dict, sample: npt.NDArray | None, donor: Donor | None,
                          from_codebook_images: bool, seed: int, progress: Progress) -> None:
    """The empty ASMK shortlist of the new index at ``out``: the ``donor``'s codebook and quantizer, or a
    codebook trained on ``sample`` and a quantizer calibrated on part of it. Records the codebook's
    provenance in ``manifest["codebook"]`` (and its size in ``manifest["asmk"]``)."""
    asmk = manifest["asmk"]
    if donor is not None:
        codebook, quantizer, manifest["codebook"] = donor
        asmk["codebook_size"] = codebook.size
        AsmkShortlist.create(out, asmk, codebook, quantizer=quantizer).close()
        return
    if sample is None:
        raise ValueError("create_asmk_shortlist needs a descriptor sample or a donor index")
    advance = progress("training codebook (k-means iterations)", KMEANS_ITERATIONS)
    codebook = train_codebook(sample, asmk["codebook_size"], iterations=KMEANS_ITERATIONS, seed=seed,
                              on_iteration=lambda: advance(1))
    manifest["codebook"] = codebook.info | {"trained_on": "codebook_paths" if from_codebook_images else "database"}
    held_out = np.random.default_rng(seed + 1).permutation(sample)[:CALIBRATION_DESCRIPTORS]
    AsmkShortlist.create(out, asmk, codebook, held_out=held_out, seed=seed).close()


def codebook_donor(index: Path, donor_manifest: dict, method: str, codebook_paths: Sequence[Path] | None,
                   codebook_size: int | None) -> Donor:
    """(codebook, fast quantizer or None, provenance record) of the ASMK index at ``index`` (whose checked
    manifest is ``donor_manifest``), for a new index of ``method``; ``ValueError`` when it cannot serve (another
    method, not ASMK, conflicting options, a damaged codebook file)."""
    if codebook_paths or codebook_size:
        raise ValueError("a reused codebook (codebook_from) excludes codebook images and a codebook size")
    if donor_manifest.get("shortlist") != "asmk" or donor_manifest.get("method") != method:
        raise ValueError(f"{index}: its codebook is for method {donor_manifest.get('method')!r} "
                         f"({donor_manifest.get('shortlist')}), not for an ASMK index of {method!r}")
    try:  # the codebook file is CRC-checked at open; the segments are not read
        with InvertedFile.open(index / "ivf", verify="lazy") as ivf:
            provenance = dict(donor_manifest.get("codebook", {})) | {"trained_on": f"reused from {index.resolve()}"}
            return ivf.codebook, ivf.quantizer, provenance
    except (SegmentFileError, IndexFormatError, OSError) as exc:
        raise ValueError(f"{index}: cannot reuse its codebook ({exc})") from None
