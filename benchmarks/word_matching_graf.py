"""Same-word correspondences against ground truth: Oxford Graf, homographies known (the words verifier's settings).

    python benchmarks/word_matching_graf.py --index rox.glx [--data ../shared/data/oxford-affine/graf_affnet]

Uses the codebook of an ASMK ``sift`` index (``--index``). Prints (1) for residual-code thresholds
``max_hamming``, the share of true and of false same-word pairs kept (img1 -> img2, 3, 4; a pair is true when
the homography maps it within 5 px), and (2) for img1 -> imgN, the true pairs and inliers of the words
verifier per number of query words (and refined hypotheses), beside descriptor matching + USAC_FAST.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from glocal.index.inverted_file import InvertedFile
from glocal.index.word_store import residual_signs
from glocal.io.images import load_image
from glocal.models.sift import RootSiftExtractor
from glocal.rerank.matching import match_descriptors
from glocal.rerank.similarity_ransac import verify_batch
from glocal.rerank.verification import verify
from glocal.rerank.word_matching import QueryWords, WordFeatures, tentative_correspondences


def true_pairs(h: np.ndarray, src: np.ndarray, dst: np.ndarray, px: float = 5.0) -> np.ndarray:
    p = np.c_[src, np.ones(len(src))] @ h.T
    return np.linalg.norm(p[:, :2] / p[:, 2:] - dst, axis=1) < px


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True, help="an ASMK index whose codebook is used")
    ap.add_argument("--data", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/oxford-affine/graf_affnet")
    args = ap.parse_args()
    with InvertedFile.open(args.index / "ivf", verify="lazy") as ivf:
        cb = ivf.codebook
    ex = RootSiftExtractor()
    a = ex.extract(load_image(args.data / "img1.png", max_side=1024), "img1")
    near = cb.assign(a.descriptors, 5)
    kept_true, kept_false = [], []
    rows = []
    configs = ((1, 1), (2, 1), (3, 1), (5, 1), (3, 3))
    for k in (2, 3, 4, 5):
        b = ex.extract(load_image(args.data / f"img{k}.png", max_side=1024), f"img{k}")
        h = np.loadtxt(args.data / f"H1to{k}p")
        wb = cb.assign(b.descriptors, 1)[:, 0]
        sb = residual_signs(b.descriptors, wb, cb.centroids)
        if k <= 4:  # code distances of every same-word pair (query's nearest word)
            i, j = np.nonzero(near[:, :1] == wb[None, :])
            ham = np.unpackbits(residual_signs(a.descriptors, near[:, 0], cb.centroids)[i] ^ sb[j], axis=1).sum(1)
            t = true_pairs(h, a.keypoints[i], b.keypoints[j])
            kept_true += list(ham[t])
            kept_false += list(ham[~t])
        db = WordFeatures(wb, sb, b.keypoints, b.scales, b.orientations)
        m = match_descriptors(a.descriptors, b.descriptors, ratio=0.9, mutual=True)
        v = verify(a.keypoints, b.keypoints, m, estimator="usac_fast")
        row = [f"1-{k}", f"{true_pairs(h, a.keypoints[m[:, 0]], b.keypoints[m[:, 1]]).sum()} / {v.inliers}"]
        for words, refine in configs:
            q = QueryWords(near[:, :words], residual_signs(a.descriptors, near[:, :words], cb.centroids),
                           a.keypoints, a.scales, a.orientations)
            c = tentative_correspondences(q, [db], words, 40)
            r = verify_batch(c, refine=refine)
            row.append(f"{true_pairs(h, c.src, c.dst).sum()} / {r.inliers[0]}")
        rows.append(row)
    t, f = np.array(kept_true), np.array(kept_false)
    print("| max_hamming | true same-word pairs kept | false same-word pairs kept |\n|---|---|---|")
    for bits in (24, 32, 36, 40, 44, 48):
        print(f"| {bits} | {np.mean(t <= bits):.0%} | {np.mean(f <= bits):.1%} |")
    heads = " | ".join(f"{w} words{'' if r == 1 else f', refine {r}'}" for w, r in configs)
    print(f"\n| pair | descriptors: true / inliers | {heads} |\n|---|---|" + "---|" * len(configs))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
