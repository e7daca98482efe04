"""How each method searches: which first stage, and whether (and how) the shortlist is verified.

Configs as data: the engine copies the entry of the chosen method into the index manifest, so an index
keeps the settings it was built with even if these defaults change later.
"""
from __future__ import annotations

import copy

from glocal.rerank.matching import hamming_threshold_from_l2

#: ASMK settings of the reference HOW/FIRe implementation: binary codes, alpha 3, tau 0, one word per
#: database descriptor and five per query descriptor, no IDF.
ASMK_STAR = {"binary": True, "alpha": 3.0, "tau": 0.0, "db_assignments": 1, "query_assignments": 5,
             "codebook_size": 65536, "codebook_descriptors_per_image": 1000}

#: ``sift``: mutual nearest neighbours with Lowe's ratio test 0.9 (tuned on mini-ROxf/RPar, see
#: benchmarks/RESULTS.md: RootSIFT is not calibrated for DELG's absolute distance threshold) and an affine
#: model with DELG's 20 px / 1,000 trials / seed 0, estimated with USAC_FAST (on mini-ROxf/RPar Medium it
#: beat plain RANSAC: 48.0 vs 46.7 and 38.9 vs 38.7). The codebook is smaller (4,096 words): SIFT
#: collections indexed by users are often small, and the size is clipped to the training sample anyway.
SIFT_MATCHER = {"ratio": 0.9, "max_distance": None, "mutual": True}
SIFT_VERIFIER = {"model": "affine", "method": "usac_fast", "threshold_px": 20.0, "max_iters": 1000, "seed": 0}

#: DELG's official re-ranking: nearest neighbour under L2 distance 1.0 (DELG*: 1.1 in Hamming terms),
#: affine RANSAC with 1,000 trials, 20 px, fixed seed.
DELG_VERIFIER = {"model": "affine", "method": "ransac", "threshold_px": 20.0, "max_iters": 1000, "seed": 0}

PIPELINES: dict[str, dict] = {
    "sift": {"shortlist": "asmk", "asmk": ASMK_STAR | {"codebook_size": 4096},
             "rerank": {"top": 100, "matcher": SIFT_MATCHER, "verifier": SIFT_VERIFIER}},
    "how": {"shortlist": "asmk", "asmk": ASMK_STAR, "rerank": {"top": 0}},
    "fire": {"shortlist": "asmk", "asmk": ASMK_STAR, "rerank": {"top": 0}},
    "delg": {"shortlist": "global", "global": {"kind": "exact"},
             "rerank": {"top": 100, "matcher": {"max_distance": 1.0, "ratio": None, "mutual": False},
                        "verifier": DELG_VERIFIER}},
    "delg-star": {"shortlist": "global", "global": {"kind": "exact"},
                  "rerank": {"top": 100, "matcher": {"max_distance": hamming_threshold_from_l2(1.1, 128),
                                                     "ratio": None, "mutual": False},
                             "verifier": DELG_VERIFIER}},
    "dolg": {"shortlist": "global", "global": {"kind": "exact"}, "rerank": {"top": 0}},
    # ViTGaL (section 4): global shortlist, then local features matched and verified as in DELG
    "vitgal": {"shortlist": "global", "global": {"kind": "exact"},
               "rerank": {"top": 100, "matcher": {"max_distance": 1.0, "ratio": None, "mutual": False},
                          "verifier": DELG_VERIFIER}},
}


def pipeline_for(method: str) -> dict:
    """A deep copy of the method's pipeline settings (safe to modify)."""
    try:
        return copy.deepcopy(PIPELINES[method])
    except KeyError:
        raise ValueError(f"no search pipeline for method {method!r}; known: {', '.join(PIPELINES)}") from None
