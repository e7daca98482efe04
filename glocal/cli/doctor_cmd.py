"""``glocal doctor``: what this installation has and lacks, as plain text (or ``--json``).

Versions (glocal, Python, the packages glocal needs), which extras are installed (a module of each is
looked up, never imported), threads (CPUs, the OpenMP / BLAS variables, OpenCV's, FAISS's and PyTorch's
thread counts), whether PyTorch sees a GPU (asked only when PyTorch is installed), the cache and download
folders, and what each method of the registry needs (its extras, whether it needs weights, the published
ones and whether they are in the cache). No method is named here: everything comes from the registry.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import typer

from glocal import __version__

#: environment variables glocal reads (values of secrets are never printed, only whether they are set)
ENV_VARS = ("GLOCAL_CACHE", "GLOCAL_WEIGHTS_URL", "GLOCAL_DATASETS_URL", "GLOCAL_PROGRESS", "GLOCAL_DEBUG")
SECRET_ENV_VARS = ("GLOCAL_TOKEN",)
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _requirements() -> dict[str, list[str]]:
    """Distribution names glocal requires, by extra (``""``: always), from its installed metadata."""
    import re

    groups: dict[str, list[str]] = {}
    try:
        requires = metadata.requires("glocal") or []
    except metadata.PackageNotFoundError:
        return groups
    for req in requires:
        name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        groups.setdefault(extra.group(1) if extra else "", []).append(name)
    return groups


def _extras() -> dict[str, dict[str, Any]]:
    from glocal.methods.spec import EXTRA_MODULES

    reqs = _requirements()
    out = {}
    for extra in sorted(set(EXTRA_MODULES) | (set(reqs) - {"", "test"})):
        modules = EXTRA_MODULES.get(extra, ())
        missing = [m for m in modules if not _installed(m)]
        out[extra] = {"installed": not missing, "missing_modules": missing,
                      "packages": {d: _version(d) for d in reqs.get(extra, [])},
                      "install": f"pip install 'glocal[{extra}]'"}
    return out


def _torch_report() -> dict[str, Any]:
    """PyTorch's threads and GPUs; PyTorch is imported only when it is installed."""
    if not _installed("torch"):
        return {"installed": False}
    try:
        import torch
    except Exception as exc:  # installed but broken: say so instead of failing the whole report
        return {"installed": True, "error": f"{type(exc).__name__}: {exc}"}
    gpus = []
    cuda = bool(torch.cuda.is_available())
    if cuda:
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return {"installed": True, "version": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "cuda_build": torch.version.cuda,
            "cuda_available": cuda, "gpus": gpus, "mps_available": bool(mps and mps.is_available())}


def _threads(torch_info: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    info |= {v: os.environ.get(v) for v in THREAD_ENV_VARS}
    try:
        import cv2

        info["opencv"] = cv2.getNumThreads()
    except ImportError:
        info["opencv"] = None
    try:
        import faiss

        info["faiss"] = faiss.omp_get_max_threads()
    except (ImportError, AttributeError):
        info["faiss"] = None
    info["torch"] = torch_info.get("threads")
    return info


def _folders() -> dict[str, Any]:
    from glocal.cli.datasets_cmd import DEFAULT_DEST
    from glocal.weights import cache_dir

    weights = cache_dir()
    root = weights.parent
    folders = {"cache": root, "weights": weights, "onnx": root / "onnx", "datasets (default download)": DEFAULT_DEST}
    return {k: {"path": str(Path(p).absolute()), "exists": Path(p).exists()} for k, p in folders.items()}


def _methods(extras: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from glocal.methods import all_specs
    from glocal.weights import cache_dir

    rows = []
    for spec in all_specs():
        missing = [e for e in spec.extras if not extras.get(e, {}).get("installed", False)]
        rows.append({"method": spec.name, "default": spec.default, "extras": list(spec.extras),
                     "missing_extras": missing, "needs_weights": spec.needs_weights,
                     "published_weights": {w.name: (cache_dir() / w.filename).is_file() for w in spec.weights},
                     "ready": not missing})
    return rows


def collect() -> dict[str, Any]:
    """Everything ``glocal doctor`` reports, as JSON-able data."""
    extras = _extras()
    torch_info = _torch_report()
    core = _requirements().get("", [])
    return {
        "glocal": __version__, "python": sys.version.split()[0], "executable": sys.executable,
        "platform": platform.platform(), "packages": {d: _version(d) for d in core},
        "extras": extras, "torch": torch_info, "threads": _threads(torch_info), "folders": _folders(),
        "environment": {v: os.environ.get(v) for v in ENV_VARS}
        | {v: ("set" if os.environ.get(v) else None) for v in SECRET_ENV_VARS},
        "methods": _methods(extras),
    }


def _gpu_line(t: dict[str, Any]) -> str:
    if not t.get("installed"):
        return "unknown: PyTorch is not installed (pip install 'glocal[deep]')"
    if "error" in t:
        return f"unknown: PyTorch does not import ({t['error']})"
    if t["gpus"]:
        return f"{len(t['gpus'])} visible: {', '.join(t['gpus'])}"
    mps = "; Apple MPS available" if t.get("mps_available") else ""
    build = f"CUDA {t['cuda_build']} build" if t.get("cuda_build") else "CPU-only build"
    return f"none visible to PyTorch ({build}){mps}"


def render(report: dict[str, Any]) -> list[str]:
    """The plain-text report, one string per line."""
    lines = [f"glocal {report['glocal']}, Python {report['python']} ({report['executable']})",
             f"platform: {report['platform']}", "", "packages:"]
    lines += [f"  {d:<28} {v or 'NOT INSTALLED'}" for d, v in report["packages"].items()]
    lines += ["", "extras:"]
    for extra, e in report["extras"].items():
        if e["installed"]:
            versions = ", ".join(f"{d} {v}" for d, v in e["packages"].items() if v)
            lines.append(f"  {extra:<12} installed{f' ({versions})' if versions else ''}")
        else:
            lines.append(f"  {extra:<12} missing ({', '.join(e['missing_modules'])}): {e['install']}")
    th = report["threads"]
    lines += ["", "threads:", f"  CPUs {th['cpu_count']}" + (f" ({th['usable_cpus']} usable by this process)"
                                                              if "usable_cpus" in th else "")]
    lines += [f"  {v}={th[v] if th[v] is not None else '(unset)'}" for v in THREAD_ENV_VARS]
    for lib in ("opencv", "faiss", "torch"):
        lines.append(f"  {lib} threads: {th[lib] if th[lib] is not None else 'n/a (not installed)'}")
    lines += ["", f"GPU: {_gpu_line(report['torch'])}", "", "folders:"]
    for what, f in report["folders"].items():
        lines.append(f"  {what:<28} {f['path']}{'' if f['exists'] else '  (not created yet)'}")
    env = {k: v for k, v in report["environment"].items() if v is not None}
    lines += ["", "environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "no GLOCAL_* variable set")]
    lines += ["", "methods:"]
    for m in report["methods"]:
        needs = ", ".join(f"[{e}]" for e in m["extras"]) or "nothing optional"
        status = "ready" if m["ready"] else "missing " + ", ".join(f"pip install 'glocal[{e}]'" for e in m["missing_extras"])
        if m["published_weights"]:
            cached = ", ".join(f"{n} ({'cached' if c else 'not downloaded'})" for n, c in m["published_weights"].items())
            weights = f"weights: published {cached}"
        else:
            weights = "weights: --checkpoint FILE" if m["needs_weights"] else "no weights needed"
        default = " (default)" if m["default"] else ""
        lines.append(f"  {m['method'] + default:<20} needs {needs}; {weights}; {status}")
    return lines


def doctor_command(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Report versions, installed extras, threads, GPU, cache folders and what each method needs."""
    report = collect()
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    print("\n".join(render(report)))
