"""How the persistent ASMK* index scales: build time, bytes per image, query latency at 10k / 100k / 1M images.

Database images are synthesised directly as aggregated ASMK* images shaped like FIRe's on R1M: 128-D
binary codes (16 bytes), ~400 non-empty words per image out of 65,536 (FIRe: 383), words drawn with the
popularity measured by quantising real descriptors, random code bits. Queries are aggregated for real from
1,000 descriptors with 5 assignments each (the reference query setting), and each query has one planted
near-duplicate in the database (its codes with 10 % of the bits flipped) that must come first.

Descriptors are RootSIFT from the sample images shipped with scikit-image (real local descriptors, no
download); the 65,536-word codebook is a random sample of them (k-means initialisation: 10 k-means
iterations at this size take hours on 2 cores). The quantisation table compares exact assignment with the
fast two-level quantizer calibrated on held-out descriptors.

    python benchmarks/asmk_scale.py                        # 10k, 100k, 1M (about 8 minutes, 8 GB of disk)
    python benchmarks/asmk_scale.py --sizes 10000 --queries 10   # quick run
    python benchmarks/asmk_scale.py --sizes 1000000 --queries 30 --dir /tmp/asmk1m-session7 --reuse \
        --paths numpy arrays records budget:0.75 budget:0.5   # the before/after table (builds once, then reuses)

``--paths``: the scoring paths timed side by side, query by query (numpy reference, compiled on the version-1
arrays layout, compiled on version-2 records, opt-in approximate budgets); ``--reuse`` reopens the index an
earlier run left in ``--dir``.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from glocal.index import manifest
from glocal.index.asmk import AggregatedImage, aggregate, assign_many
from glocal.index.codebook import Codebook
from glocal.index.inverted_file import IndexSettings, InvertedFile
from glocal.index.posting_records import record_views
from glocal.index.quantizer import agreement, fast_quantizer
from glocal.index.segment_file import ArrayFile, write_arrays
from glocal.index.stats import index_stats


def rootsift_images(seed: int, angles: tuple[float, ...] = (0, 30)) -> list[np.ndarray]:
    """RootSIFT descriptors of scikit-image's bundled sample images at several scales and rotations, one array
    per warped image (in a seeded random order)."""
    import cv2
    import skimage.data

    root = os.path.dirname(skimage.data.__file__)
    sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=0.01)
    out = []
    for f in sorted(glob.glob(root + "/*.png") + glob.glob(root + "/*.jpg")):
        im = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        if im is None:
            continue
        for scale in (0.5, 0.75, 1.0, 1.5, 2.0):
            for angle in angles:
                m = cv2.getRotationMatrix2D((im.shape[1] / 2, im.shape[0] / 2), angle, scale)
                warped = cv2.warpAffine(im, m, (int(im.shape[1] * scale), int(im.shape[0] * scale)))
                _, d = sift.detectAndCompute(warped, None)
                if d is not None:
                    d = d / (d.sum(axis=1, keepdims=True) + 1e-7)
                    out.append(np.sqrt(d).astype(np.float32))
    return [out[i] for i in np.random.default_rng(seed).permutation(len(out))]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def synth_batch(rng, n, word_table, words_per_image, k):
    """``n`` aggregated images as flat arrays (item sizes, words, codes).

    Words are drawn by inverse CDF through ``word_table`` (a 2**20-entry lookup table of the popularity),
    sorted per image, and repeated draws dropped.
    """
    draws = int(words_per_image * 1.005)  # a few duplicates are dropped: ~words_per_image remain
    w = np.sort(word_table[rng.integers(0, len(word_table), (n, draws))], axis=1)
    keep = np.ones(w.shape, bool)
    keep[:, 1:] = w[:, 1:] != w[:, :-1]
    sizes = keep.sum(axis=1)
    words = w[keep].astype(np.int32)
    codes = np.frombuffer(rng.bytes(16 * len(words)), np.uint8).reshape(-1, 16)
    return sizes, words, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--words", type=int, default=65_536)
    ap.add_argument("--words-per-image", type=int, default=400)
    ap.add_argument("--batch", type=int, default=100_000, help="images per add (one segment each)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantizer-only", action="store_true", help="stop after the quantisation table")
    ap.add_argument("--reuse", action="store_true",
                    help="with --dir: reuse an index built there by an earlier run (its queries, planted ids and "
                         "build time are kept next to it in ivf_N.bench.npz); build only the sizes missing")
    ap.add_argument("--paths", nargs="+", default=["numpy", "arrays", "records"],
                    help="ASMK* scoring paths timed side by side, query by query (the first is the reference for "
                         "'same'): numpy or compiled (that kernel on the index as built), arrays (compiled, "
                         "version-1 layout: codes and ids in two arrays), records (compiled, version-2 records), "
                         "budget:F (records, approximate: the query's shortest lists up to a fraction F of its "
                         "entries). arrays / records use a copy of the index in that layout (hard links, "
                         "converted once, reused)")
    ap.add_argument("--warm", choices=["query", "pass"], default="query",
                    help="query: each path searches each query once untimed right before its timed search (its "
                         "lists are in the page cache, even when the page cache cannot hold every path's copy "
                         "of the index: 30 queries touch ~6 GiB of a 1M index); pass: one untimed pass over all "
                         "queries first (the earlier tables)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    work = Path(args.dir or tempfile.mkdtemp(prefix="asmk_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; index folders under {work}")
    if args.reuse and args.dir is None:
        raise SystemExit("--reuse needs --dir (the folder of an earlier run)")
    saved = {n: work / f"ivf_{n}.bench.npz" for n in args.sizes}
    if args.reuse and all(f.exists() and (work / f"ivf_{n}" / "MANIFEST.json").exists() for n, f in saved.items()):
        return measure(args, work, {n: load_built(f) for n, f in saved.items()})

    # -- descriptors, codebook, quantisation ------------------------------------------------------
    per_image, t = timed(rootsift_images, args.seed)
    # query images: 1,000 descriptors of one warped image each; the rest, shuffled, for codebook and statistics
    big = [i for i, d in enumerate(per_image) if len(d) >= 1000][: args.queries]
    qdesc = [per_image[i][np.sort(rng.choice(len(per_image[i]), 1000, replace=False))] for i in big]
    x = np.concatenate([d for i, d in enumerate(per_image) if i not in set(big)])
    x = x[rng.permutation(len(x))]
    print(f"RootSIFT: {len(x):,} descriptors + {len(qdesc)} query images in {t:.0f} s")
    if len(x) < args.words + 20_000:
        raise SystemExit(f"only {len(x):,} descriptors for a {args.words:,}-word codebook")
    codebook = Codebook(np.ascontiguousarray(x[: args.words]), {"kind": "random sample (k-means init)"})
    held_out, pool = x[args.words: args.words + 6000], x[args.words + 6000:]
    q, t = timed(fast_quantizer, codebook, held_out[:5000], target=0.99, k=1, query_k=5, seed=args.seed)
    print(f"fast quantizer: {q.cells} cells, nprobe {q.nprobe} (k = 1) / {q.nprobe_multi} (k = 5), calibrated on "
          f"5,000 held-out descriptors, built in {t:.1f} s")
    test = held_out[5000:6000]
    batch = qdesc[:8]  # 8 real images of 1,000 descriptors: one per call, and quantised together (index build)
    rows = []
    for k in (1, 5):
        ex, t_ex = timed(codebook.assign, test, k)
        c0 = time.process_time()
        codebook.assign(test, k)
        c_ex = time.process_time() - c0
        q.assign(test[:10], k)
        ts, cs, t1, tb = [], [], [], []
        for _ in range(5):
            c0 = time.process_time()
            ts.append(timed(q.assign, test, k)[1])
            cs.append(time.process_time() - c0)
            t1.append(timed(assign_many, q, batch, k, rows_per_call=1)[1] / len(batch))
            tb.append(timed(assign_many, q, batch, k)[1] / len(batch))
        batch_agree = agreement(np.concatenate(assign_many(q, qdesc, k)), codebook.assign(np.concatenate(qdesc), k))
        rows.append((k, q.probes(k), t_ex * 1e3, c_ex * 1e3, float(np.median(ts)) * 1e3, float(np.median(cs)) * 1e3,
                     agreement(q.assign(test, k), ex), float(np.median(t1)) * 1e3, float(np.median(tb)) * 1e3,
                     batch_agree))
    print(f"\nquantisation of 1,000 descriptors (one image), {args.words:,} words, 128-D; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times suffer when other jobs run). Last three "
          f"columns: {len(batch)} query images of 1,000 descriptors, one per call, then all in one call "
          f"(assign_many, as the index build does); agreement over all {len(qdesc)} query images")
    print("| k | cells probed | exact wall (ms) | exact CPU (ms) | fast wall (ms) | fast CPU (ms) | agreement with exact "
          "| images: one per call (ms / image) | 8 per call (ms / image) | agreement, query images |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, p, te, ce, tf, cf, a, t1m, tbm, ab in rows:
        print(f"| {k} | {p} of {q.cells} | {te:.0f} | {ce:.0f} | {tf:.1f} | {cf:.1f} | {a * 100:.2f} % | {t1m:.1f} "
              f"| {tbm:.1f} | {ab * 100:.2f} % |")
    if args.quantizer_only:
        return

    # -- word popularity and queries ----------------------------------------------------------------
    hist = np.bincount(q.assign(pool[:100_000], 1)[:, 0], minlength=args.words).astype(np.float64) + 0.5
    cdf = np.cumsum(hist / hist.sum())
    word_table = np.searchsorted(cdf, (np.arange(1 << 20) + 0.5) / (1 << 20)).clip(0, args.words - 1).astype(np.int32)
    queries = [aggregate(d, codebook, 5, True, q) for d in qdesc]
    print(f"\nqueries: {len(queries)} x 1,000 descriptors, 5 assignments -> "
          f"{np.mean([len(a) for a in queries]):.0f} words per query on average")

    built = {}
    for n in args.sizes:
        f = work / f"ivf_{n}.bench.npz"
        if args.reuse and f.exists() and (work / f"ivf_{n}" / "MANIFEST.json").exists():
            built[n] = load_built(f)
            continue
        built[n] = build(args, work / f"ivf_{n}", n, rng, codebook, q, queries, word_table)
        planted, build_s, synth_s = built[n][1:]
        np.savez(f, planted=planted, build_s=build_s, synth_s=synth_s, sizes=[len(a) for a in queries],
                 words=np.concatenate([a.words for a in queries]), codes=np.concatenate([a.codes for a in queries]))
    measure(args, work, built)


def load_built(f: Path) -> tuple[list[AggregatedImage], np.ndarray, float, float]:
    """(queries, planted ids, build s, synthesis s) saved by an earlier run next to its index."""
    z = np.load(f)
    off = np.concatenate([[0], np.cumsum(z["sizes"])])
    queries = [AggregatedImage(z["words"][a:b], z["codes"][a:b]) for a, b in zip(off[:-1], off[1:])]
    return queries, z["planted"], float(z["build_s"]), float(z["synth_s"])


def build(args, root: Path, n: int, rng, codebook, q, queries, word_table) -> tuple:
    """Synthesise and add ``n`` images at ``root``, each query's near-duplicate planted at a random id."""
    shutil.rmtree(root, ignore_errors=True)
    idx = InvertedFile.create(root, codebook, IndexSettings(binary=True, max_segments=64), quantizer=q)
    synth_s = build_s = 0.0
    planted = np.sort(rng.choice(n, len(queries), replace=False))
    done = 0
    while done < n:
        m = min(args.batch, n - done)
        (sizes, words, codes), t = timed(synth_batch, rng, m, word_table, args.words_per_image, args.words)
        synth_s += t
        # plant each query's near-duplicate at its id: the query's words and codes, 10 % bits flipped
        off = np.concatenate([[0], np.cumsum(sizes)])
        parts_s, parts_w, parts_c, last = [], [], [], 0
        for j, pid in enumerate(planted):
            if done <= pid < done + m:
                i = pid - done
                flip = np.packbits(rng.random((len(queries[j]), 128)) < 0.1, axis=1)
                parts_w += [words[off[last]:off[i]], queries[j].words]
                parts_c += [codes[off[last]:off[i]], queries[j].codes ^ flip]
                parts_s += [sizes[last:i], [len(queries[j])]]
                last = i + 1
        parts_w.append(words[off[last]:])
        parts_c.append(codes[off[last]:])
        parts_s.append(sizes[last:])
        _, t = timed(idx.add_arrays, np.concatenate(parts_s), np.concatenate(parts_w), np.concatenate(parts_c))
        build_s += t
        done += m
    idx.close()
    print(f"  {n:,} images built in {build_s:.1f} s (+{synth_s:.1f} s synthesis)", flush=True)
    return queries, planted, build_s, synth_s


def layout_copy(root: Path, layout: str) -> Path:
    """``root`` if all its segments are in ``layout`` (arrays: version 1, records: version 2), else a copy in that
    layout next to it (``root-layout``: hard links to the files, then the segments rewritten), reused later."""
    with InvertedFile.open(root, verify="size") as idx:
        if all((s.postings is not None) == (layout == "records") for s in idx.segments):
            return root
    out = root.with_name(f"{root.name}-{layout}")
    if (out / "MANIFEST.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for f in root.iterdir():
        if f.name != "LOCK":
            os.link(f, out / f.name)
    t0 = time.perf_counter()
    if layout == "records":
        with InvertedFile.open(out, writable=True, verify="size") as idx:
            idx.upgrade()
    else:  # version 1 as an older glocal wrote it: one segment at a time
        m = manifest.read_manifest(out)
        for e in m["segments"]:
            f = ArrayFile(out / e["file"])
            arrays = {k: np.array(v) for k, v in f.arrays.items()}
            meta = dict(f.meta)
            f.close()
            items, codes = record_views(arrays.pop("postings"))
            arrays |= {"items": np.ascontiguousarray(items), "codes": np.ascontiguousarray(codes)}
            (out / e["file"]).unlink()  # the hard link: the original file stays as it was
            e["crc32"] = write_arrays(out / e["file"], arrays, meta)
            e["bytes"] = (out / e["file"]).stat().st_size
        m["version"] = 1
        manifest.write_manifest(out, m)
    print(f"  {out}: {layout} layout written in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def open_paths(root: Path, paths: list[str]) -> dict[str, tuple[InvertedFile, str, float]]:
    """(index, kernel, budget) of each scoring path (see --paths)."""
    opened: dict[str, InvertedFile] = {}

    def index(layout: str) -> InvertedFile:
        if layout not in opened:
            opened[layout] = InvertedFile.open(layout_copy(root, layout) if layout != "built" else root, verify="size")
        return opened[layout]

    out = {}
    for p in paths:
        if p in ("numpy", "compiled"):
            out[p] = (index("built"), p, 1.0)
        elif p in ("arrays", "records"):
            out[p] = (index(p), "compiled", 1.0)
        elif p.startswith("budget:"):
            out[p] = (index("records"), "compiled", float(p.split(":")[1]))
        else:
            raise SystemExit(f"unknown path {p!r}")
    return out


def measure(args, work: Path, built: dict) -> None:
    """Time the scoring paths side by side, query by query, on each built index; print the table."""
    table = []
    paths = args.paths
    for n, (queries, planted, build_s, synth_s) in built.items():
        root = work / f"ivf_{n}"
        opened = open_paths(root, paths)
        st = index_stats(opened[paths[-1]][0])
        first = {}
        for p, (idx, kernel, budget) in opened.items():  # first query: numba cache load (or JIT), first page touch
            first[p] = timed(idx.search, queries[0], 100, kernel=kernel, budget=budget)[1] * 1e3
        for agg in queries if args.warm == "pass" else []:  # warm-up: page cache of every list the queries read
            for idx, kernel, budget in opened.values():
                if kernel != "numpy":
                    idx.search(agg, 100, kernel=kernel, budget=budget)
        lat = {p: [] for p in paths}
        cpu = {p: [] for p in paths}
        hits, same, load = {p: 0 for p in paths}, {p: 0 for p in paths}, os.getloadavg()
        recall = {p: [] for p in paths}
        for j, agg in enumerate(queries):  # the paths alternate query by query: same load for all
            out = {}
            for p, (idx, kernel, budget) in opened.items():
                if args.warm == "query":
                    idx.search(agg, 100, kernel=kernel, budget=budget)
                c0 = time.process_time()
                out[p], t = timed(idx.search, agg, 100, kernel=kernel, budget=budget)
                cpu[p].append((time.process_time() - c0) * 1e3)
                lat[p].append(t * 1e3)
                hits[p] += int(out[p][0][0] == planted[j])
            ref_ids, ref_vals = out[paths[0]]
            above = ref_vals > ref_vals[-1]
            for p, (i, v) in out.items():
                same[p] += int(np.array_equal(v, ref_vals) and np.array_equal(i[above], ref_ids[above]))
                recall[p].append(len(np.intersect1d(i, ref_ids)) / max(len(ref_ids), 1))
        for idx, *_ in opened.values():
            idx.close()
        for p in paths:
            row = (n, p, build_s, st.words_per_image, st.bytes_per_image, st.index_bytes / 2**30, st.segments,
                   float(np.median(lat[p])), float(np.percentile(lat[p], 95)), float(np.median(cpu[p])), hits[p],
                   len(queries), same[p], load, first[p], float(np.mean(recall[p])))
            table.append(row)
            print(f"  {n:,} images, {p}: build {build_s:.1f} s (+{synth_s:.1f} s synthesis), "
                  f"{st.bytes_per_image:.0f} B/image, query median {row[7]:.1f} ms (CPU {row[9]:.1f} ms)", flush=True)
        if n >= 1_000_000 and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n| images | path | build (s) | words/image | bytes/image | index size (GiB) | segments | query p50 (ms) "
          f"| query p95 (ms) | CPU p50 (ms) | planted duplicate first | top-100 same as {paths[0]} | recall@100 "
          "| load average (1/5/15 min) | first query (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, k, b, wpi, bpi, gib, segs, med, p95, c, hit, nq, same, load, first, rec in table:
        print(f"| {n:,} | {k} | {b:.1f} | {wpi:.0f} | {bpi:.0f} | {gib:.2f} | {segs} | {med:.1f} | {p95:.1f} | {c:.1f} "
              f"| {hit}/{nq} | {same}/{nq} | {rec:.3f} | {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} | {first:.0f} |")
    print("\nbuild = add_arrays (sort by word, write, fsync, commit) of pre-aggregated images, synthesis excluded;"
          " query = search of an aggregated query (top 100) on a warm page cache (--warm query: the same search"
          " untimed just before; pass: one untimed pass over the queries first), quantisation excluded; paths alternate query by query. CPU = process CPU time (all threads)."
          " 'same': identical top-100 scores, and identical ids above the 100th score (ties at the boundary may"
          " pick different ids). first query = first compiled search in the process (numba cache load / JIT).")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
