"""ONNX Runtime inference for the DELG, DOLG and ViTGaL extractors (``runtime="onnx"`` in their configs).

The network's forward for one combination of outputs (DELG / ViTGaL: ``(with_global, with_local)``; DOLG:
none) is exported once to ONNX with a dynamic batch, height and width, cached on disk, and run by an
``onnxruntime.InferenceSession`` on the CPU (``intra_op_num_threads`` = torch's thread count at session
creation, all graph optimisations). The outputs come back as torch tensors under the torch path's keys,
so the rest of the extraction (pyramid, selection, fusion) is unchanged. CPU only: ``runtime="onnx"``
with a CUDA device is rejected by the configs (:mod:`glocal.models.configs`).

Exporter: ``torch.export.export`` with named dynamic dimensions, then ``torch.onnx.export(dynamo=True)``
of that program (needs the ``onnx`` and ``onnxscript`` packages). Measured here (torch 2.14, ORT 1.32):
the legacy TorchScript exporter (``dynamo=False``) traces sizes into Python numbers, so the TF-style DELG
backbone (TF ``'same'`` padding computed from the input size) came out with its padding frozen: wrong
descriptors and wrong grid sizes at any other input size, with no error; it also failed outright on DOLG's
single-tensor output. Named dimensions make ``torch.export`` fail loudly instead of specialising a size,
and the dynamo path got every model right. Two changes in the models made XCiT (ViTGaL) exportable: no
``int()`` / ``len()`` on sizes, no size-dependent branch. Exporting a ResNet-50 model takes ~10 s on 2
busy cores, once per weights (the file is reused after); every new file is checked against torch on an
input of another size before it is kept.

Inputs with a side under :data:`MIN_SIDE` (64; the ResNet's stride-32 grid must be at least 2 cells so
that the graph makes no size-1 broadcasting assumption) or over :data:`MAX_SIDE` run on the torch module.

Cache: ``$GLOCAL_CACHE/onnx`` or ``~/.cache/glocal/onnx``; the file name carries a sha256 of the model
class, its module and config ``repr``, the output flags, the torch version, the export settings and every
state-dict tensor (names, dtypes, shapes, bytes), so different weights or architectures never share a
file. Files are written to a temporary name and renamed (atomic on POSIX).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

INSTALL_HINT = "runtime='onnx' needs: pip install 'glocal[onnx]'"
MIN_SIDE = 64
MAX_SIDE = 16384
OPSET = 18
#: bump when the export recipe changes, so old cache files are not reused
FORMAT = 1

#: ``(model, batch, flags) -> {name: (B, ...) tensor}``: the torch path of one output combination
OutputsFn = Callable[[nn.Module, Tensor, tuple[bool, ...]], dict[str, Tensor]]


def _require(*modules: str) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            from glocal.errors import MissingDependencyError

            raise MissingDependencyError(f"{INSTALL_HINT} ({name} is not installed)") from None


def cache_dir() -> Path:
    """Where the exported graphs live: ``$GLOCAL_CACHE/onnx``, else ``~/.cache/glocal/onnx``."""
    root = os.environ.get("GLOCAL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "glocal") / "onnx"


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of what an exported graph depends on besides the output flags: see the module notes."""
    h = hashlib.sha256()
    for part in (f"format={FORMAT}", f"{type(model).__module__}.{type(model).__qualname__}", repr(model),
                 repr(getattr(model, "config", None)), f"torch={torch.__version__}",
                 f"opset={OPSET} sides={MIN_SIDE}..{MAX_SIDE}"):
        h.update(part.encode() + b"\0")
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class _Graph(nn.Module):
    """What is exported: ``outputs_fn`` for fixed flags, its dict flattened to a tuple in ``keys`` order."""

    def __init__(self, model: nn.Module, outputs_fn: OutputsFn, flags: tuple[bool, ...], keys: list[str]) -> None:
        super().__init__()
        self.model, self.outputs_fn, self.flags, self.keys = model, outputs_fn, flags, keys
        self.training = False  # not .eval(): that would recurse into the caller's model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.outputs_fn(self.model, x, self.flags)
        return tuple(out[k] for k in self.keys)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: Any, x: Tensor) -> dict[str, Tensor]:
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
    names = [o.name for o in session.get_outputs()]
    return {k: torch.from_numpy(v) for k, v in zip(names, session.run(names, feed))}


def export_onnx(model: nn.Module, outputs_fn: OutputsFn, flags: tuple[bool, ...], path: Path) -> None:
    """Export ``outputs_fn(model, x, flags)`` to ``path`` (dynamic batch, height, width), check it against
    torch on an input of another size, then move it into place atomically."""
    _require("onnx", "onnxscript")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.no_grad():
        example = torch.randn(2, 3, 96, 128, generator=g)
        check = torch.randn(1, 3, 81, 113, generator=g)
        keys = list(outputs_fn(model, example, flags))
        graph = _Graph(model, outputs_fn, flags, keys)
        dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
                3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
        program = torch.export.export(graph, (example,), dynamic_shapes=(dims,))
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, optimize=True, verbose=False,
                                         opset_version=OPSET, input_names=["image"], output_names=keys)
        expected = outputs_fn(model, check, flags)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx_program.save(tmp, external_data=False)
        got = _run(_session(tmp), check)
        for k in keys:
            if got[k].shape != expected[k].shape or not torch.allclose(got[k], expected[k], rtol=1e-3, atol=1e-4):
                raise RuntimeError(f"onnx_runtime.py: the exported {type(model).__name__} graph disagrees with "
                                   f"torch on output {k!r} at input size {tuple(check.shape)}; use runtime='torch'")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class OnnxModel:
    """``model`` run by ONNX Runtime, one session per output combination, created on first use.

    :param model: the network, in eval mode on the CPU (its weights must not change afterwards).
    :param outputs_fn: the torch path ``(model, batch, flags) -> {name: tensor}``; it is what is
        exported, and what runs inputs outside :data:`MIN_SIDE` .. :data:`MAX_SIDE`.
    :raises MissingDependencyError: onnxruntime is not installed.
    """

    def __init__(self, model: nn.Module, outputs_fn: OutputsFn) -> None:
        _require("onnxruntime")
        self.model, self.outputs_fn = model, outputs_fn
        self.exported: list[Path] = []  # files this instance exported (the others came from the cache)
        self._sessions: dict[tuple[bool, ...], Any] = {}
        self._digest: str | None = None
        self._lock = threading.Lock()  # extraction runs in threads; export each graph once

    def cache_path(self, flags: tuple[bool, ...]) -> Path:
        """The cache file of one output combination."""
        if self._digest is None:
            self._digest = model_fingerprint(self.model)
        tag = "".join("1" if f else "0" for f in flags) or "x"
        digest = hashlib.sha256(f"{self._digest}:{flags}".encode()).hexdigest()[:32]
        return cache_dir() / f"{type(self.model).__name__.lower()}-{tag}-{digest}.onnx"

    def session(self, flags: tuple[bool, ...]) -> Any:
        """The session of ``flags``: from the cache file, exported first when there is none."""
        with self._lock:
            if flags not in self._sessions:
                path = self.cache_path(flags)
                if not path.is_file():
                    export_onnx(self.model, self.outputs_fn, flags, path)
                    self.exported.append(path)
                self._sessions[flags] = _session(path)
            return self._sessions[flags]

    def __call__(self, x: Tensor, flags: tuple[bool, ...] = ()) -> dict[str, Tensor]:
        """Outputs of a (B, 3, H, W) CPU batch, as the torch path gives them."""
        if not all(MIN_SIDE <= s <= MAX_SIDE for s in x.shape[-2:]):
            return self.outputs_fn(self.model, x, flags)
        return _run(self.session(flags), x)
