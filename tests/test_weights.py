"""Published weights by name: verified, cached downloads (from a local server) that the extractors load."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from glocal import methods
from glocal.cli.main import app
from glocal.errors import BadCheckpointError
from glocal.weights import REGISTRY, WeightsError, fetch, published, resolve_checkpoint

if TYPE_CHECKING:  # the server fixture lives in tests/conftest.py
    from conftest import FileServer

runner = CliRunner()


@pytest.fixture
def mirror(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileServer:
    monkeypatch.setenv("GLOCAL_WEIGHTS_URL", f"{server.url}/mirror")
    monkeypatch.setenv("GLOCAL_CACHE", str(tmp_path / "cache"))
    return server


def test_registry_names_official_files() -> None:
    assert REGISTRY["fire"].url == "http://download.europe.naverlabs.com/ComputerVision/FIRe/official/fire.pth"
    assert REGISTRY["how-r50"].url.endswith("/how/models/how_r50-.pth")
    assert (REGISTRY["how-r50"].method, REGISTRY["fire"].method) == ("how", "fire")
    assert {w.method for w in REGISTRY.values()} <= set(methods.names())


def test_registry_is_derived_from_the_method_specs() -> None:
    """Every spec's published weights, each with its method, and nothing else."""
    expected = {w.name: (spec.name, w) for spec in methods.all_specs() for w in spec.weights}
    assert {name: tuple(entry) for name, entry in published().items()} == expected
    assert dict(REGISTRY) == published() and len(REGISTRY) == len(expected) and "nope" not in REGISTRY
    method, weights = REGISTRY["fire"]
    assert method == "fire" and weights in methods.get("fire").weights and weights.filename == "fire.pth"
    assert issubclass(WeightsError, BadCheckpointError) and WeightsError.exit_status == 3


def test_fetch_downloads_once_and_notices_damage(mirror: FileServer, tmp_path: Path) -> None:
    mirror.files["/mirror/fire.pth"] = b"weights" * 1000
    path = fetch("fire", progress=False)
    assert path == tmp_path / "cache" / "weights" / "fire.pth" and path.read_bytes() == b"weights" * 1000
    requests = len(mirror.ranges)
    assert fetch("fire", progress=False) == path and len(mirror.ranges) == requests  # cached: no request
    path.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="no longer matches"):
        fetch("fire", progress=False)


def test_failed_download_names_the_weights(mirror: FileServer) -> None:
    with pytest.raises(WeightsError, match="weights 'how-r50'.*404"):
        fetch("how-r50", progress=False)


def test_resolve_checkpoint_paths_names_and_mistakes(mirror: FileServer, tmp_path: Path) -> None:
    own = tmp_path / "mine.pth"
    own.write_bytes(b"x")
    assert resolve_checkpoint(own, "how") == own  # a file is used as it is
    with pytest.raises(WeightsError, match="not a published checkpoint name.*fire"):
        resolve_checkpoint("no-such-weights", "how")
    with pytest.raises(WeightsError, match="for --method fire, not how"):
        resolve_checkpoint("fire", "how")


def test_cli_download_and_bad_checkpoint(mirror: FileServer, tmp_path: Path, photo_path: Path) -> None:
    mirror.files["/mirror/fire.pth"] = b"w" * 10
    res = runner.invoke(app, ["weights", "download", "fire", "--to", str(tmp_path / "w")],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0 and (tmp_path / "w" / "fire.pth").read_bytes() == b"w" * 10
    res = runner.invoke(app, ["weights", "list"])
    assert res.exit_code == 0 and "how-r50" in res.output
    res = runner.invoke(app, ["index", "build", str(photo_path), "--out", str(tmp_path / "x.glx"),
                              "--method", "how", "--checkpoint", "nope"])
    assert res.exit_code == 3 and "not a published checkpoint name" in res.output
    res = runner.invoke(app, ["weights", "download", "nope"])
    assert res.exit_code == 3 and res.output.startswith(f"error: unknown weights 'nope'; known: {', '.join(sorted(REGISTRY))}")
    assert len(res.output.strip().splitlines()) == 1


def test_published_name_loads_into_the_extractor(mirror: FileServer, tmp_path: Path) -> None:
    """A HOW checkpoint served under the official file name is fetched by name and loads its weights."""
    torch = pytest.importorskip("torch")
    from glocal.methods import create_extractor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-weights warning of the source model
        source = create_extractor("how", seed=3, max_side=64, scales=[1.0])
    saved = source.save_checkpoint(tmp_path / "src.pth")
    mirror.files["/mirror/how_r50-.pth"] = saved.read_bytes()
    path = resolve_checkpoint("how-r50", "how", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the source's whitening was never fitted: said again on load
        loaded = create_extractor("how", checkpoint=str(path), max_side=64, scales=[1.0])
    for (name, a), (_, b) in zip(source.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.equal(a, b), name
