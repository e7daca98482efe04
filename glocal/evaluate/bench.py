"""``glocal bench``: extraction latency per method and configuration, and database bytes per image scaled to
R1M (1,001,001 images): the DELG appendix's Table 1 (latency and memory), from our code, next to the papers'.

Extraction (:func:`bench_extract`): one 1024 x 1024 image (seeded noise; random weights where no checkpoint
is given: timing does not depend on the weights), ``warmup`` untimed calls, then the median and 95th
percentile of ``repeats`` timed calls, and the peak resident memory the calls added (Linux: the high-water
mark reset through ``/proc/self/clear_refs``; elsewhere the growth of ``ru_maxrss``). Configurations come
from each method's extractor options, never from its name:

- ``scales`` N in {1, 3, 5, 7}: the pyramid of :data:`SCALE_SETS`;
- a method with local and global scales (``scales`` + ``global_scales``) gets two rows per N: ``global``
  (no local scales, the N global ones) and ``global+local`` (N local scales; global over the same N when
  N <= 3, else over the 3 middle ones, as DELG's official 7-scale setting); a method with one pyramid gets
  one row per N (``global`` or ``local`` by its first stage); a method without a pyramid (SIFT, ALIKED)
  one row;
- an ``attention_threshold`` is set to 0 so that random weights keep ``max_keypoints`` features, as trained
  weights do on a photo;
- runtimes: ``torch`` (eager PyTorch, channels_last on the CPU as the library runs it), ``torch-nchw``
  (eager, plain NCHW memory layout), ``torch-bf16``, ``onnx``, each where the method's ``runtime`` option
  offers it; on CUDA (when present) fp32 and fp16 (autocast), batch 1 and a batch of ``batch`` images.

Memory (:func:`bench_memory`): a real index built from generated photos (crops of scikit-image's sample
photos at ``size`` px); bytes per image of the first stage (the inverted file without its codebook, or the
global vectors / codes) and of everything stored (features for re-ranking, words, sources), fixed costs
(codebook) counted once, scaled to :data:`R1M_IMAGES`.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glocal import methods
from glocal.errors import BadOptionError, GlocalError
from glocal.io.images import LoadedImage
from glocal.models.configs import DELG_GLOBAL_SCALES, DELG_LOCAL_SCALES, DOLG_SCALES

#: the R1M protocol's database: 1M distractors and 1,001 ... images (as the papers count it)
R1M_IMAGES = 1_001_001
SCALE_SETS: dict[int, tuple[float, ...]] = {1: (1.0,), 3: tuple(DELG_GLOBAL_SCALES), 5: tuple(DOLG_SCALES),
                                            7: tuple(DELG_LOCAL_SCALES)}
RUNTIMES = ("torch", "torch-nchw", "torch-bf16", "onnx")

#: the papers' figures (latency on an NVIDIA Tesla P100 at 1024 x 1024; memory of ROxf+1M in GB)
PAPERS: tuple[dict[str, Any], ...] = (
    *({"row": row, "ms": ms, "gb_r1m": gb, "source": "DELG (Cao et al., ECCV 2020), appendix Table 1"}
      for row, ms, gb in (("DELF-R-ASMK*", 2260, 27.6), ("R50-GeM (3 scales)", 100, 7.7),
                          ("R101-GeM (3 scales)", 175, 7.7), ("R50-DELG (3 scales global & local)", 118, 439.4),
                          ("R50-DELG", 244, 485.5), ("R101-DELG (3 scales global & local)", 193, 437.1),
                          ("R101-DELG* (3 scales global & local)", 193, 21.1), ("R101-DELG", 416, 485.9),
                          ("R101-DELG*", 416, 22.6), ("DELF (3 scales)", 98, 434.2), ("DELF (7 scales)", 201, 477.9))),
    *({"row": row, "ms": ms, "gb_r1m": gb, "source": "ViTGaL (Phan et al.), Table 5"}
      for row, ms, gb in (("XCiT-S12/16-ViTGaL+Autoencoder", 158, 420.1),
                          ("XCiT-S12/16-ViTGaL+Autoencoder (1 scale global & local)", 63, 120.1))),
    *({"row": row, "ms": None, "gb_r1m": gb, "source": "FIRe (Weinzaepfel et al., ICLR 2022), Table 3 "
       "(global + re-ranking rows without local features)"}
      for row, gb in (("HOW R50-", 7.9), ("FIRe R50-", 6.4), ("DELF-R-ASMK (FIRe's count)", 27.4),
                      ("DELG R50 (global only)", 7.6))),
)


def _field(config: Any, name: str) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(config) if f.name == name), None)


def timing_settings(spec: Any) -> dict[str, Any]:
    """Settings that make random weights behave like trained ones for timing and memory: an attention
    threshold of 0 (``max_keypoints`` features kept) and, where a method refuses to run without weights,
    its explicit random-weights switch."""
    config = spec.extractor
    out: dict[str, Any] = {"attention_threshold": 0.0} if _field(config, "attention_threshold") else {}
    if _field(config, "random_weights") is not None and getattr(config, "checkpoint", None) is None:
        out["random_weights"] = True
    return out


def configurations(spec: Any, scales: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
    """(label, extractor option overrides) of each configuration of ``spec`` timed (see module docstring)."""
    config = spec.extractor
    extra = timing_settings(spec)
    if _field(config, "scales") is None:
        return [("native", extra)]
    out = []
    for n in scales:
        if n not in SCALE_SETS:
            raise BadOptionError(f"--scales {n}: choose among {sorted(SCALE_SETS)}")
        pyramid = SCALE_SETS[n]
        if _field(config, "global_scales") is not None:
            out.append((f"{n} scale{'s' * (n > 1)}, global", extra | {"scales": (), "global_scales": pyramid}))
            out.append((f"{n} scale{'s' * (n > 1)}, global+local",
                        extra | {"scales": pyramid, "global_scales": pyramid if n <= 3 else SCALE_SETS[3]}))
        else:
            kind = "global" if spec.first_stage == "global" else "local"
            if kind == "global" and spec.rerank.rerank_top > 0:  # local features for verification, no pyramid
                kind = "global+local"
            out.append((f"{n} scale{'s' * (n > 1)}, {kind}", extra | {"scales": pyramid}))
    return out


def runtimes_of(spec: Any, wanted: Sequence[str]) -> list[str]:
    """The runtimes of ``wanted`` that ``spec``'s extractor offers (``native`` when it has no runtime option)."""
    field = _field(spec.extractor, "runtime")
    if field is None:
        return ["native"]
    offered = set(field.metadata.get("choices", ("torch",))) | {"torch-nchw"}
    return [r for r in wanted if r in offered]


def _peak_rss_reset() -> Callable[[], float]:
    """Start measuring; the returned function gives the peak resident MB added since."""
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)

        def vm(key: str) -> float:
            line = next(x for x in status.read_text().splitlines() if x.startswith(key))
            return float(line.split()[1]) / 1024

        start = vm("VmRSS:")
        return lambda: vm("VmHWM:") - start
    except (OSError, StopIteration):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start


def _make_extractor(spec: Any, overrides: dict[str, Any], runtime: str, device: str) -> Any:
    settings = dict(overrides)
    if runtime not in ("native", "torch-nchw"):
        settings["runtime"] = runtime
    if _field(spec.extractor, "device") is not None:
        settings["device"] = device
    options = spec.configure(settings, where="bench")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        extractor = spec.create_extractor(options.extractor)
    if runtime == "torch-nchw" and getattr(extractor, "model", None) is not None:
        import torch

        extractor.model.to(memory_format=torch.contiguous_format)
        extractor._channels_last = False
    return extractor


def _time_calls(call: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        sync()
        t = time.perf_counter()
        call()
        sync()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t))
    return times


def bench_extract(names: Sequence[str], scales: Sequence[int] = (1, 3), runtimes: Sequence[str] = ("torch",),
                  repeats: int = 3, warmup: int = 1, size: int = 1024, threads: int | None = None,
                  batch: int = 4, gpu: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per method x configuration x runtime x device setting, notes). See the module docstring."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = LoadedImage(pixels, (size, size), 1.0)
    rows: list[dict[str, Any]] = []
    cuda = gpu and torch.cuda.is_available()
    notes = [f"CPU: {torch.get_num_threads()} torch threads, load average "
             f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {size} x {size} px; random weights where no "
             "checkpoint is given"]
    if not cuda:
        notes.append("no GPU: the GPU rows (fp32 / fp16, batch 1 and batched) are not measured")
    for name in names:
        spec = methods.get(name)
        for label, overrides in configurations(spec, scales):
            settings = [("cpu", r, "bf16" if r == "torch-bf16" else "fp32", 1) for r in runtimes_of(spec, runtimes)]
            if cuda and _field(spec.extractor, "device") is not None:
                settings += [("cuda", "torch", p, b) for p in ("fp32", "fp16") for b in (1, batch)]
            for device, runtime, precision, b in settings:
                rows.append(_one(spec, label, overrides, device, runtime, precision, b, image, repeats, warmup))
    return rows, notes


def _one(spec: Any, label: str, overrides: dict[str, Any], device: str, runtime: str, precision: str, b: int,
         image: LoadedImage, repeats: int, warmup: int) -> dict[str, Any]:
    import contextlib

    import torch

    row = {"method": spec.name, "config": label, "device": device, "runtime": runtime, "precision": precision,
           "batch": b, "threads": torch.get_num_threads() if device == "cpu" else None}
    try:
        extractor = _make_extractor(spec, overrides, runtime, device)
    except (ValueError, BadOptionError) as exc:
        return row | {"error": str(exc).splitlines()[0]}
    if getattr(extractor, "_onnx", None) is not None:
        extractor.extract(image, "setup")  # export or cached graph load: not timed
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    amp = (torch.autocast("cuda", dtype=torch.float16) if precision == "fp16" else contextlib.nullcontext())
    features: list = []

    def call() -> None:
        with amp, torch.inference_mode():
            if b > 1 and hasattr(extractor, "extract_batch"):
                features[:] = extractor.extract_batch([image] * b, [f"b{i}" for i in range(b)])
            else:
                features[:] = [extractor.extract(image, "bench") for _ in range(b)]

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    peak = _peak_rss_reset()
    times = [t / b for t in _time_calls(call, repeats, warmup, sync)]
    row |= {"ms_median": round(statistics.median(times), 1), "ms_p95": round(float(np.percentile(times, 95)), 1),
            "repeats": repeats, "peak_mb": round(peak(), 1), "local_features": int(features[0].num_features)}
    if device == "cuda":
        row["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def generated_photos(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` JPEG photos of ``size`` x ``size`` px: random crops (40-100 % of the side, random flips) of
    scikit-image's sample photos, so that features behave as on photos rather than on noise."""
    import cv2
    import skimage.data

    sources = [getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        side = int(min(src.shape[:2]) * rng.uniform(0.4, 1.0))
        y, x = rng.integers(0, src.shape[0] - side + 1), rng.integers(0, src.shape[1] - side + 1)
        crop = src[y : y + side, x : x + side]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        img = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_LINEAR)
        paths.append(folder / f"photo{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def bench_memory(names: Sequence[str], images: int = 10, size: int = 1024,
                 settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per method: bytes per image of a real index over ``images`` generated photos, and the
    first stage and all files scaled to :data:`R1M_IMAGES` (fixed costs, the codebook, counted once)."""
    from glocal.index.builder import build_index

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = generated_photos(Path(tmp) / "photos", images, size)
        for name in names:
            spec = methods.get(name)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # random weights
                    result = build_index(paths, [p.name for p in paths], Path(tmp) / f"{name}.glx", method=name,
                                         settings=timing_settings(spec) | dict(settings or {}), progress=False,
                                         workers=1)
            except GlocalError as exc:
                rows.append({"method": name, "error": str(exc).splitlines()[0]})
                continue
            with result.collection as c:
                info = c.info()
            n = info["images"]
            fixed = int(info["shortlist"].get("codebook_bytes", 0))
            first = float(info["shortlist"]["bytes_per_image"])
            every = (info["total_bytes"] - fixed) / max(n, 1)
            rows.append({"method": name, "images": n, "first_stage": info["shortlist"]["kind"],
                         "first_stage_bytes_per_image": round(first, 1), "all_bytes_per_image": round(every, 1),
                         "fixed_bytes": fixed, "first_stage_gb_r1m": round((first * R1M_IMAGES + fixed) / 1e9, 2),
                         "all_gb_r1m": round((every * R1M_IMAGES + fixed) / 1e9, 2)})
    return rows


def _cell(v: Any) -> str:
    return "" if v is None else (f"{v:,}" if isinstance(v, (int, float)) else str(v))


def extract_markdown(rows: Sequence[dict[str, Any]], notes: Sequence[str]) -> str:
    """The extraction rows as a markdown table (errors in their own column), notes below."""
    head = ["method", "configuration", "device", "runtime", "precision", "batch", "threads", "median ms / image",
            "p95 ms / image", "peak MB added", "local features", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["config"], r["device"], r["runtime"], r["precision"], r["batch"], r["threads"],
                 r.get("ms_median"), r.get("ms_p95"), r.get("peak_mb"), r.get("local_features"), r.get("error")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def memory_markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = ["method", "first stage", "indexed images", "first stage B / image", "all files B / image",
            f"first stage GB at {R1M_IMAGES:,}", f"all files GB at {R1M_IMAGES:,}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [r["method"], r["first_stage"], r["images"], r["first_stage_bytes_per_image"],
                 r["all_bytes_per_image"], r["first_stage_gb_r1m"], r["all_gb_r1m"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def seeds_table(extract_rows: Sequence[dict[str, Any]], memory_rows: Sequence[dict[str, Any]]) -> str:
    """The DELG appendix Table 1 layout: method, extraction ms, memory at R1M; our rows (CPU medians, this
    machine) above the papers' (P100 GPU) with their source. The papers count memory differently (DELG: local
    and global descriptors; FIRe: the ASMK or global representation only), so theirs has its own column."""
    mem = {r["method"]: r for r in memory_rows}

    def threads(r: dict[str, Any]) -> str:
        return f", {r['threads']} threads" if r["threads"] else ""

    lines = ["| method | source | extraction ms (1024 px) | memory R1M GB: first stage | memory R1M GB: all files "
             "| memory R1M GB: paper (as it counts) |", "|---|---|---|---|---|---|"]
    for r in extract_rows:
        if "ms_median" not in r:
            continue
        m = mem.get(r["method"], {})
        lines.append(f"| {r['method']} ({r['config']}; {r['runtime']}, {r['precision']}, batch {r['batch']}) | "
                     f"glocal, {r['device']}{threads(r)} | "
                     f"{_cell(r['ms_median'])} | {_cell(m.get('first_stage_gb_r1m'))} | {_cell(m.get('all_gb_r1m'))} | |")
    for p in PAPERS:
        lines.append(f"| {p['row']} | {p['source']} | {_cell(p['ms'])} | | | {_cell(p['gb_r1m'])} |")
    return "\n".join(lines)
