"""Distributed extraction on Ray (issue 20 item 3): a local two-worker Ray gives the single-process features,
resumes without redoing finished shards, retries a failed shard, and reports bad images per file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'glocal[distributed]')")

from glocal import methods  # noqa: E402
from glocal.extract.backends import extract_to_shards, run_shard  # noqa: E402
from glocal.extract.ray_backend import RayBackend, ShardFailedError  # noqa: E402
from glocal.extract.shards import MANIFEST, FeatureShards  # noqa: E402

METHOD = "sift"
SHARD = 2


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the whole module (starting one costs seconds); the backends join it."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 1024 * 1024, log_to_driver=False,
             logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    """Seven textured images (blurred noise and rectangles: SIFT finds keypoints) and one broken file, 4th."""
    from PIL import Image, ImageDraw, ImageFilter

    root = tmp_path_factory.mktemp("ray_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        p = root / f"img{i}.jpg"
        if i == 3:
            p.write_bytes(b"\xff\xd8 not a jpeg")
        else:
            img = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x, y = rng.integers(0, 130), rng.integers(0, 90)
                draw.rectangle([x, y, x + rng.integers(8, 30), y + rng.integers(8, 30)], fill=tuple(rng.integers(0, 255, 3)))
            img.save(p, quality=95)
        paths.append(p)
    return paths, [p.name for p in paths]


def _spec():
    spec = methods.get(METHOD)
    return spec, spec.configure({})


def _extract(images, out: Path, backend=None):
    spec, options = _spec()
    return extract_to_shards(images[0], images[1], out, spec, options, backend=backend, shard_size=SHARD,
                             threads=1 if backend else 2)


def _features(root: Path) -> list[tuple]:
    return [(f.name, f.keypoints, f.descriptors, f.image_size) for f in FeatureShards.open(root)]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return [x[0] for x in a] == [x[0] for x in b] and all(
        np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2]) and x[3] == y[3] for x, y in zip(a, b))


@pytest.fixture(scope="module")
def single(images, tmp_path_factory) -> tuple[Path, object]:
    """The single-process path's features folder (the reference) and its report."""
    out = tmp_path_factory.mktemp("single") / "f"
    return out, _extract(images, out)


def test_two_ray_workers_give_the_single_process_features(ray_session, images, single, tmp_path: Path) -> None:
    ref, ref_report = single
    report = _extract(images, tmp_path / "f", RayBackend("local", workers=2))
    assert (report.extracted, report.written_shards, report.kept_shards) == (7, 4, 0)
    got = _features(tmp_path / "f")
    assert [g[0] for g in got] == [n for n in images[1] if n != "img3.jpg"]  # names, in order
    assert all(len(g[1]) > 0 for g in got) and _same(got, _features(ref))
    # the shard files themselves are byte for byte those of the single-process path
    manifest, ref_manifest = (json.loads((p / MANIFEST).read_text()) for p in (tmp_path / "f", ref))
    assert manifest["checksums"] == ref_manifest["checksums"] and len(manifest["checksums"]) == 4
    # the bad image is reported per file, as in the single-process path, and the rest extracted
    assert [(f.path, f.name) for f in report.failures] == [(str(images[0][3]), "img3.jpg")]
    assert report.failures == ref_report.failures
    assert not list((tmp_path / "f").glob("*.partial-*"))


def test_a_rerun_redoes_only_the_missing_or_damaged_shards(ray_session, images, tmp_path: Path) -> None:
    out = tmp_path / "f"
    _extract(images, out, RayBackend("local", workers=2))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.glf")}
    (out / "shard-00001.glf").unlink()
    damaged = out / "shard-00002.glf"
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit inside the last record: the file's checksum no longer matches
    damaged.write_bytes(bytes(data))
    os.utime(damaged, ns=(before[damaged.name], before[damaged.name]))
    report = _extract(images, out, RayBackend("local", workers=2))
    assert (report.kept_shards, report.written_shards, report.extracted) == (2, 2, 3)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.glf")}
    assert {n for n in after if after[n] == before[n]} == {"shard-00000.glf", "shard-00003.glf"}
    assert len(FeatureShards.open(out)) == 7
    joined = []

    class Watched(RayBackend):
        def _connect(self, ray_module):
            joined.append(True)
            return super()._connect(ray_module)

    again = _extract(images, out, Watched("local", workers=2))  # nothing left to do: Ray is not even joined
    assert (again.kept_shards, again.written_shards, joined) == (4, 0, [])
    assert _extract(images, tmp_path / "g", Watched("local", workers=2)).written_shards == 4 and joined == [True]


def test_a_failed_shard_is_retried_and_succeeds(ray_session, images, single, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    def flaky(task):  # a local function: Ray ships it by value to the workers
        mark = marks / str(task.job.number)
        if task.job.number in (1, 2) and not mark.exists():
            mark.write_text("failed once")
            if task.job.number == 1:
                raise RuntimeError("injected worker failure")
            os._exit(3)  # the worker process dies
        return run_shard(task)

    backend = RayBackend("local", workers=2, retries=2, run_task=flaky)
    report = _extract(images, tmp_path / "f", backend)
    assert (report.extracted, report.written_shards) == (7, 4)
    assert sorted(name for name, _ in report.retried) == ["shard-00001.glf", "shard-00002.glf"]
    assert any("injected worker failure" in why for _, why in report.retried)
    assert _same(_features(tmp_path / "f"), _features(single[0]))


def test_a_shard_failing_every_attempt_is_named_and_the_others_are_kept(ray_session, images, tmp_path) -> None:
    def broken(task):
        if task.job.number == 0:
            raise RuntimeError("always fails")
        return run_shard(task)

    out = tmp_path / "f"
    with pytest.raises(ShardFailedError, match=r"shard-00000.glf: RuntimeError: always fails.*run the same command"):
        _extract(images, out, RayBackend("local", workers=2, retries=1, run_task=broken))
    assert sorted(json.loads((out / MANIFEST).read_text())["done"]) == [f"shard-0000{i}.glf" for i in (1, 2, 3)]
    report = _extract(images, out, RayBackend("local", workers=2))
    assert (report.kept_shards, report.written_shards, report.extracted) == (3, 1, 2)


def test_cli_extract_with_ray_then_index_from_the_shards(ray_session, images, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from glocal.cli.main import app

    runner, env = CliRunner(), {"GLOCAL_PROGRESS": "0"}
    folder = images[0][0].parent
    res = runner.invoke(app, ["extract", str(folder), "--method", METHOD, "--out", str(tmp_path / "f"),
                              "--shard-size", "3", "--ray", "local", "--workers", "2"], env=env)
    assert res.exit_code == 1 and "img3.jpg" in res.output, res.output  # done, one file skipped
    assert "extracted 7 images into 3 shards" in res.output
    res = runner.invoke(app, ["index", "build", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "x.glx"),
                              "--codebook-size", "16"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["search", str(tmp_path / "x.glx"), str(images[0][5]), "--json"], env=env)
    assert res.exit_code == 0 and json.loads(res.stdout)["results"][0]["name"] == "img5.jpg"


def test_a_cuda_extractor_asks_for_a_gpu_and_is_refused_by_a_cluster_without_one(ray_session, images, tmp_path) -> None:
    from glocal.errors import BadOptionError
    from glocal.extract.backends import ShardTask
    from glocal.extract.ray_backend import gpus_per_worker, needs_gpu
    from glocal.extract.shards import ShardJob

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray has a GPU")
    spec = next(s for s in methods.all_specs() if hasattr(s.extractor, "device"))
    on_gpu, on_cpu = (spec.configure({"device": d}) for d in ("cuda", "cpu"))
    job = ShardJob(0, (), ())
    assert needs_gpu(ShardTask(job, tmp_path, spec.name, on_gpu.to_dict()))
    assert not needs_gpu(ShardTask(job, tmp_path, spec.name, on_cpu.to_dict()))
    assert [gpus_per_worker(g, 4) for g in (0, 1, 2, 4, 8)] == [0, 0.25, 0.5, 1.0, 1.0]
    with pytest.raises(BadOptionError, match="runs on CUDA but the Ray cluster has no GPU"):
        extract_to_shards(images[0], images[1], tmp_path / "f", spec, on_gpu, backend=RayBackend("local", workers=2))
    assert not list((tmp_path / "f").glob("shard-*"))
