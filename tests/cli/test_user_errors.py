"""Every user mistake of every command: one line on stderr, no traceback, the documented exit status
(README "Exit status"; glocal/errors.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def files(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from glocal.index.builder import build_index

    root = tmp_path_factory.mktemp("user-errors")
    index = root / "ok.glx"
    build_index(demo_benchmark.db_paths[:6], demo_benchmark.db_names[:6], index, settings={"codebook_size": 32},
                progress=False).collection.close()
    not_image = root / "notes.jpg"
    not_image.write_text("not an image")
    empty = root / "empty"
    empty.mkdir()
    bad_utf8 = root / "bad-utf8.glx"
    shutil.copytree(index, bad_utf8)
    (bad_utf8 / "manifest.json").write_bytes(b"\xff\xfe\x00 not utf-8")
    wrong_type = root / "list.glx"
    shutil.copytree(index, wrong_type)
    (wrong_type / "manifest.json").write_text("[1, 2, 3]")
    newer = root / "newer.glx"
    shutil.copytree(index, newer)
    text = (newer / "manifest.json").read_text().replace('"version": 3', '"version": 99')
    (newer / "manifest.json").write_text(text)
    return {"index": index, "image": demo_benchmark.db_paths[0], "not_image": not_image, "empty": empty,
            "bad_utf8": bad_utf8, "wrong_type": wrong_type, "newer": newer, "root": root,
            "folder": demo_benchmark.db_paths[0].parent}


#: (what the user did, argv with {placeholders}, exit status, words the one line must contain)
CASES = [
    ("build: no such folder", "index build {root}/nowhere --out {root}/a.glx", 3, "no such file or folder"),
    ("build: no images", "index build {empty} --out {root}/a.glx", 3, "no images found"),
    ("build: unknown --set key", "index build {folder} --out {root}/a.glx --set bogus=1", 2, "valid keys"),
    ("build: bad --set value", "index build {folder} --out {root}/a.glx --set ratio=abc", 2, "ratio: expected a number"),
    ("build: bad --set syntax", "index build {folder} --out {root}/a.glx --set ratio", 2, "expected KEY=VALUE"),
    ("build: unknown method", "index build {folder} --out {root}/a.glx --method nope", 2, "known methods"),
    ("build: output exists", "index build {folder} --out {index}", 3, "already exists"),
    ("build: regions on a global method", "index build {folder} --out {root}/a.glx --method dolg --regions rmac", 2,
     "unknown key 'regions'"),
    ("build: images and --features", "index build {folder} --features {root} --out {root}/a.glx", 2, "not both"),
    ("build: not a features folder", "index build --features {empty} --out {root}/a.glx", 3, "not a features folder"),
    ("build: codebook donor missing", "index build {folder} --out {root}/a.glx --codebook-from {root}/no.glx", 3,
     "no such index folder"),
    ("add: no such index", "index add {root}/no.glx {folder}", 3, "no such index folder"),
    ("add: no such images", "index add {index} {root}/nowhere", 3, "no such file or folder"),
    ("info: no such index", "index info {root}/no.glx", 3, "no such index folder"),
    ("info: not an index", "index info {empty}", 3, "not a glocal index"),
    ("info: manifest not UTF-8", "index info {bad_utf8}", 3, "manifest"),
    ("info: manifest of the wrong type", "index info {wrong_type}", 3, "not a glocal index manifest"),
    ("info: index from a newer glocal", "index info {newer}", 3, "upgrade glocal"),
    ("remove: no such index", "index remove {root}/no.glx x.jpg", 3, "no such index folder"),
    ("compact: no such index", "index compact {root}/no.glx", 3, "no such index folder"),
    ("search: no such index", "search {root}/no.glx {image}", 3, "no such index folder"),
    ("search: query not an image", "search {index} {not_image}", 3, "notes.jpg"),
    ("search: query missing", "search {index} {root}/none.jpg", 3, "none.jpg"),
    ("search: bad box", "search {index} {image} --bbox 1,2,3", 2, "bbox"),
    ("search: qe on an ASMK index", "search {index} {image} --qe 2", 2, "global"),
    ("search: extractor option at search time", "search {index} {image} --set max_keypoints=10", 2,
     "fixed when the index is built"),
    ("search: bad re-ranking value", "search {index} {image} --set ratio=2", 2, "ratio must be in"),
    ("extract: unknown method", "extract {folder} --out {root}/f --method nope", 2, "known methods"),
    ("extract: unknown key", "extract {folder} --out {root}/f --set bogus=1", 2, "valid keys"),
    ("extract: no such images", "extract {root}/nowhere --out {root}/f", 3, "no such file or folder"),
    ("eval: no dataset there", "eval roxford5k --data {root}/nowhere", 3, "nowhere"),
    ("methods show: unknown method", "methods show nope", 2, "known methods"),
    ("visualize: method without maps", "visualize attention {image} --method sift", 2, "attention maps are drawn for"),
    ("whiten: method without whitening", "whiten {folder} --out {root}/w.pt --method sift", 2, "whitening is learned for"),
    ("serve: no such index", "serve {root}/no.glx", 3, "no"),
]


@pytest.mark.parametrize("what, argv, status, words", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_with_its_exit_status(files, what: str, argv: str, status: int, words: str) -> None:
    args = [a.format(**files) for a in argv.split()]
    result = runner.invoke(app, args, env={"GLOCAL_PROGRESS": "0"})
    assert result.exit_code == status, (what, result.output)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line or "Usage:" in line]
    if status == 2 and "Usage:" in result.stderr:  # click's own usage errors: a usage line and a boxed message
        assert words.lower() in " ".join(result.stderr.split()).lower(), result.stderr
        return
    assert len(errors) == 1 and errors[0].startswith("error: "), lines
    assert words.lower() in errors[0].lower(), errors[0]
