"""gem's learned whitening (no labels): the fitted map is the PCA-whitening formula (identity covariance of
the whitened training vectors before L2 normalisation), a bad file is refused in one line, and
``glocal whiten --method gem`` writes a file that ``--set whitening=`` uses to build and search."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glocal.errors import BadCheckpointError, BadInputError

pytest.importorskip("torch")
from glocal.models import gem as gem_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _sample(n: int = 2000, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)  # strongly anisotropic
    return rng.normal(size=(n, d)) @ mix.T + rng.normal(size=d)


def test_whitened_training_vectors_have_identity_covariance() -> None:
    x = _sample()
    mean, projection, eigval = gem_model.fit_global_whitening(x, dim=None, eps=0.0)
    assert projection.shape == (16, 16) and mean.shape == (16,)
    assert np.allclose(mean, x.mean(0))
    y = (x - mean) @ projection.T  # before the L2 normalisation
    assert np.allclose(y.mean(0), 0.0, atol=1e-9)
    assert np.allclose(np.cov(y.T, bias=True), np.eye(16), atol=1e-8)
    assert (np.diff(eigval) <= 0).all()
    # the formula: P = diag(lambda + eps)^-1/2 E^T, eigen-pairs of the (biased) covariance
    eps = 0.5
    _, p_eps, lam = gem_model.fit_global_whitening(x, dim=5, eps=eps)
    cov = np.cov(x.T, bias=True)
    for i in range(5):
        e = p_eps[i] * np.sqrt(lam[i] + eps)
        assert abs(np.linalg.norm(e) - 1.0) < 1e-9 and np.allclose(cov @ e, lam[i] * e, atol=1e-8)
    y5 = (x - mean) @ p_eps.T
    assert np.allclose(np.cov(y5.T, bias=True), np.diag(lam / (lam + eps)), atol=1e-8)
    # applied: (x - m) P^T, rows L2-normalised, float32
    w = gem_model.apply_global_whitening(x[:7], (mean.astype(np.float32), p_eps.astype(np.float32)))
    expected = y5[:7] / np.linalg.norm(y5[:7], axis=1, keepdims=True)
    assert w.dtype == np.float32 and w.shape == (7, 5) and np.allclose(w, expected, atol=1e-4)


def test_default_dimension_is_the_sample_rank_and_bad_requests_are_refused() -> None:
    x = _sample(n=6)
    assert gem_model.fit_global_whitening(x)[1].shape == (5, 16)
    with pytest.raises(BadInputError, match="dimension"):
        gem_model.fit_global_whitening(x, dim=17)
    with pytest.raises(BadInputError, match="eps is 0"):
        gem_model.fit_global_whitening(x, dim=10, eps=0.0)
    with pytest.raises(BadInputError, match="at least 2"):
        gem_model.fit_global_whitening(x[:1])


def test_a_whitening_file_round_trips_and_a_bad_one_is_refused_in_one_line(tmp_path: Path) -> None:
    x = _sample(n=50, d=8)
    mean, projection, eigval = gem_model.fit_global_whitening(x, dim=4)
    path = gem_model.save_global_whitening(tmp_path / "w.npz", mean, projection, eigval)
    m, p = gem_model.load_global_whitening(path, 8)
    assert np.allclose(m, mean, atol=1e-6) and np.allclose(p, projection, rtol=1e-5) and p.shape == (4, 8)

    not_npz = tmp_path / "junk.npz"
    not_npz.write_bytes(b"this is not an npz file")
    wrong_keys = tmp_path / "keys.npz"
    np.savez(wrong_keys, weights=np.zeros(3))
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, mean=np.zeros(8, np.float32), projection=np.zeros((4, 7), np.float32))
    nan = tmp_path / "nan.npz"
    np.savez(nan, mean=np.full(8, np.nan, np.float32), projection=np.zeros((4, 8), np.float32))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mean=np.array([{"a": 1}], dtype=object), projection=np.zeros((4, 8), np.float32))
    cases = {not_npz: "not a readable", wrong_keys: "needs the arrays", wrong_shape: "do not fit",
             nan: "NaN", pickled: "not a readable", tmp_path / "missing.npz": "no such file"}
    for bad, what in cases.items():
        with pytest.raises(BadCheckpointError, match=what) as err:
            gem_model.load_global_whitening(bad, 8)
        assert "\n" not in str(err.value) and str(bad) in str(err.value)


def _write_images(folder: Path) -> list[Path]:
    from PIL import Image
    from skimage import data

    folder.mkdir()
    paths = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        pixels = getattr(data, name)()
        image = Image.fromarray(pixels).convert("RGB")
        image.thumbnail((256, 256))
        paths.append(folder / f"{name}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def test_glocal_whiten_gem_end_to_end(tmp_path: Path) -> None:
    from glocal.models.backbones import efficientnet_lite as enl

    pytest.importorskip(enl.variant("lite2").module)
    pytest.importorskip("skimage.data")
    from typer.testing import CliRunner

    from glocal.cli.main import app

    runner = CliRunner()
    env = {"GLOCAL_PROGRESS": "0"}
    paths = _write_images(tmp_path / "imgs")
    w = tmp_path / "gem_whitening.npz"
    res = runner.invoke(app, ["whiten", str(tmp_path / "imgs"), "--method", "gem", "--out", str(w), "--dim", "3"],
                        env=env)
    assert res.exit_code == 0, res.output
    assert "5 images" in res.output and w.exists()
    mean, projection = gem_model.load_global_whitening(w, 1280)
    assert projection.shape == (3, 1280)

    idx = tmp_path / "w.glx"
    res = runner.invoke(app, ["index", "build", str(tmp_path / "imgs"), "--out", str(idx), "--method", "gem",
                              "--set", f"whitening={w}"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["search", str(idx), str(paths[1]), "--top", "5", "--json"], env=env)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["results"][0]["name"] == paths[1].name

    res = runner.invoke(app, ["index", "build", str(tmp_path / "imgs"), "--out", str(tmp_path / "bad.glx"),
                              "--method", "gem", "--set", f"whitening={paths[0]}"], env=env)
    assert res.exit_code != 0 and "whitening file" in res.output
