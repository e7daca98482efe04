"""Every command the README prints runs as printed (issue 19).

The fenced ``bash`` / ``sh`` / ``console`` / ``shell`` blocks of README.md are parsed; every line that
starts with ``glocal `` or ``python -m glocal`` is a command (a trailing ``# comment`` is dropped, an
optional ``[...]`` part is run both left out and given). Each runs in a subprocess, from the folder of a
small generated collection laid out under the README's own placeholder names (:data:`PLACEHOLDERS`), in
README order (later commands use what earlier ones built). What each must do is in :data:`EXPECT`, keyed
by the command as the README prints it: a README command missing from that table, or using a path the
placeholder table does not know, fails the test, so a new README command cannot go untested.

Nothing touches the network: the weights and dataset hosts are replaced by a closed local port
(``GLOCAL_WEIGHTS_URL``, ``GLOCAL_DATASETS_URL``), so the download commands must fail with the offline
message. A command whose extra is not installed must exit 4 naming it. The two set-up commands of the
README (``make demo``, ``make test``) are not run here.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FENCES = ("bash", "sh", "console", "shell")

#: every path a README command may name -> what the fixture puts there (inputs) or which command makes it
PLACEHOLDERS = {
    "photos/": "14 images of two landmarks and a distractor (input)",
    "photos/old.jpg": "a distractor inside photos/ (input)",
    "more_photos/": "two distractors (input)",
    "more/": "two distractors (input)",
    "query.jpg": "a query photo, 640 px wide (input)",
    "photo.jpg": "a database photo (input)",
    "path/to/roxford5k": "a two-query dataset in the revisited layout (input)",
    "delg_r50.npz": "random DELG weights as an .npz of arrays (input)",
    "my_photos/": "six labelled photos and a distractor with labels.csv (input)",
    "data/": "download destination (output)",
    "my.glx": "index built by the README", "b.glx": "index built by the README",
    "my2.glx": "index built by the README", "r.glx": "index built by the README",
    "delg.glx": "index built by the README", "big.glx": "index the README tries to build",
    "fire.glx": "index the README tries to build", "feats/": "features folder made by 'glocal extract'",
    "matches/": "pictures made by 'glocal search --draw'", "run1/": "training run made by 'glocal train'",
    "run1/model.pt": "weights exported by 'glocal train'", "run2/": "classification run made by 'glocal train delg'", "tuned.glx": "index built by the README", "attention.png": "picture made by 'glocal visualize'",
}
#: a folder of two photos: deep-model commands that only need to show they run take it for ``photos/``
FEW_PHOTOS = {"photos/": "few_photos/"}
#: the query at 160 px wide, for a deep-model search
SMALL_QUERY = {"query.jpg": "small/query.jpg"}

OFFLINE_WEIGHTS = ("no network", "127.0.0.1", "save it as")
OFFLINE_DATASET = ("no network", "127.0.0.1", "gnd_roxford5k.pkl", "save it as data/roxford5k/gnd_roxford5k.pkl")


@dataclass(frozen=True)
class Expect:
    """What one README command must do.

    :param status: exit status.
    :param stdout: texts stdout must hold; :param stderr: texts stderr must hold.
    :param creates: files (relative to the fixture) that must exist afterwards.
    :param extra: the extra the command needs: when it is not installed, status 4 naming it is expected.
    :param remap: placeholder -> fixture path, for a command run with the same flags on a smaller input.
    :param serve: a server: started, asked ``GET /health``, stopped.
    """

    status: int = 0
    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()
    creates: tuple[str, ...] = ()
    extra: str | None = None
    remap: dict[str, str] = field(default_factory=dict)
    serve: bool = False


EXPECT: dict[str, Expect] = {
    "glocal index build photos/ --out my.glx": Expect(stdout=("indexed 23 images",), creates=("my.glx/manifest.json",)),
    "glocal index add my.glx more_photos/": Expect(stdout=("added 2 images", "now holds 25")),
    "glocal search my.glx query.jpg --bbox 10,20,400,300 --top 20 [--json] [--draw matches/]":
        Expect(stdout=("astronaut_",)),
    "glocal search my.glx query.jpg --set ratio=0.8": Expect(stdout=("astronaut_",)),
    "glocal index remove my.glx photos/old.jpg": Expect(stdout=("removed 1 images", "now holds 24")),
    "glocal index compact my.glx": Expect(stdout=("dropped 1 removed images, kept 24",)),
    "glocal index build more/ --out b.glx --codebook-from my.glx": Expect(stdout=("indexed 2 images",)),
    "glocal index info my.glx": Expect(stdout=("images",)),
    "glocal index verify my.glx [--repair]": Expect(stdout=("no damage",)),
    "glocal extract photos/ --out feats/": Expect(stdout=("extracted 23 images",)),
    "glocal index build --features feats/ --out my2.glx": Expect(stdout=("indexed 23 images",)),
    "glocal methods": Expect(stdout=("sift",)),
    "glocal index build photos/ --out r.glx --set ratio=0.8 --set max_keypoints=1000": Expect(stdout=("indexed 23 images",)),
    "glocal eval roxford5k --data path/to/roxford5k": Expect(stdout=("mAP", "easy", "medium", "hard"),
                                                             stderr=("2 queries",)),
    "glocal eval custom --data my_photos/": Expect(stdout=("mAP",), stderr=("6 queries, 7 database images",)),
    "glocal datasets download roxford5k data/": Expect(status=3, stderr=OFFLINE_DATASET),
    "glocal index build photos/ --method delg --checkpoint delg_r50.npz --out delg.glx":
        Expect(stdout=("indexed 2 images",), extra="deep", remap=FEW_PHOTOS),
    # IVF-PQ is for large collections: on two photos it must refuse in one line, saying what to use instead
    "glocal index build photos/ --method dolg --global ivfpq --out big.glx":
        Expect(status=2, stderr=("needs at least", "index=exact"), extra="deep", remap=FEW_PHOTOS),
    "glocal index build photos/ --method fire --checkpoint fire --out fire.glx":
        Expect(status=3, stderr=OFFLINE_WEIGHTS + ("fire.pth",), extra="deep"),
    "glocal weights list": Expect(stdout=("fire",)),
    "glocal search delg.glx query.jpg --qe 2 --dba 3": Expect(stdout=("rank",), extra="deep", remap=SMALL_QUERY),
    "glocal visualize attention photo.jpg --method fire --out attention.png":
        Expect(stdout=("wrote attention.png",), creates=("attention.png",), extra="deep"),
    "glocal serve my.glx --port 8080": Expect(serve=True, extra="serve"),
    "glocal train gem --data my_photos/ --out run1 --steps 4 --image-size 128 --eval-every 2 --checkpoint-every 2":
        Expect(stdout=("run1/model.pt",), creates=("run1/model.pt", "run1/MODEL_CARD.md"), extra="deep"),
    "glocal train gem --resume run1 --steps 6": Expect(stdout=("run1/model.pt",), extra="deep"),
    "glocal index build photos/ --method gem --set checkpoint=run1/model.pt --out tuned.glx":
        Expect(stdout=("indexed",), creates=("tuned.glx/manifest.json",), extra="deep", remap=FEW_PHOTOS),
    "glocal train delg --data my_photos/ --out run2 --steps 3 --batch 4 --image-size 128 --eval-fraction 0 "
    "--set backbone=efficientnet-lite0":
        Expect(stdout=("run2/model.pt",), stderr=("step 3",), creates=("run2/model.pt", "run2/MODEL_CARD.md"),
               extra="deep"),
    "glocal demo": Expect(stdout=("mAP", "page:"), creates=("demo_output/index.html",)),
    "glocal doctor": Expect(stdout=("extras:", "threads:", "GPU:", "methods:")),
    "glocal bench extract --methods sift --repeats 3 [--json]": Expect(stdout=("sift", "native")),
    "glocal bench memory --methods sift --images 5 [--json]": Expect(stdout=("sift", "ASMK")),
}


# -- the README's commands ------------------------------------------------------------------------------
def readme_commands(text: str) -> list[str]:
    """The ``glocal`` command lines of the fenced shell blocks of ``text``, comments dropped, in order."""
    commands, fence = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            fence = None if fence is not None else (line[3:].strip().lower() or "text")
            continue
        if fence not in FENCES:
            continue
        line = line.removeprefix("$ ")
        if not (line.startswith("glocal ") or line == "glocal" or line.startswith("python -m glocal")):
            continue
        commands.append(re.sub(r"\s+#.*$", "", line).strip())
    return commands


def variants(command: str) -> list[list[str]]:
    """The argument lists of a command: its ``[...]`` parts left out, then all given."""
    bare = re.sub(r"\s*\[[^\]]*\]", "", command)
    full = re.sub(r"\[([^\]]*)\]", r"\1", command)
    return [shlex.split(bare)] + ([shlex.split(full)] if full != bare else [])


def path_like(token: str) -> bool:
    """An argument naming a file or folder (not an option, a number list or a KEY=VALUE)."""
    if token.startswith("-") or "=" in token or re.fullmatch(r"[\d.,]+", token):
        return False
    return "/" in token or re.search(r"\.[A-Za-z]\w*$", token) is not None


def test_readme_parser_finds_commands_and_rejects_unknown_placeholders() -> None:
    text = "x\n```bash\nglocal index build pics/ --out a.glx  # comment\nmake test\n```\n```python\nglocal x\n```\n"
    assert readme_commands(text) == ["glocal index build pics/ --out a.glx"]
    assert [t for t in shlex.split(readme_commands(text)[0]) if path_like(t)] == ["pics/", "a.glx"]
    assert variants("glocal a [--json] [--draw m/]") == [["glocal", "a"], ["glocal", "a", "--json", "--draw", "m/"]]
    assert not path_like("ratio=0.8") and not path_like("10,20,400,300") and not path_like("--top")


def test_every_readme_command_is_in_the_tables() -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 20, commands
    missing = [c for c in commands if c not in EXPECT]
    assert not missing, f"README commands without an entry in EXPECT (add what each must do): {missing}"
    unknown = sorted({t for c in commands for v in variants(c) for t in v if path_like(t) and t not in PLACEHOLDERS})
    assert not unknown, f"README paths the placeholder table does not know (add them to PLACEHOLDERS): {unknown}"
    stale = [c for c in EXPECT if c not in commands]
    assert not stale, f"EXPECT entries for commands the README no longer prints: {stale}"


# -- the fixture --------------------------------------------------------------------------------------------
def _copy_as(src: Path, dst: Path, width: int | None = None) -> None:
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if width is None:
        shutil.copy(src, dst)
        return
    with Image.open(src) as im:
        im.convert("RGB").resize((width, round(im.height * width / im.width))).save(dst, quality=92)


def build_fixture(root: Path, bench) -> None:
    """The README's inputs (:data:`PLACEHOLDERS`) under ``root``, from the generated benchmark ``bench``."""
    from glocal.io.safe_pickle import safe_load_pickle

    jpg = bench.root / "jpg"
    gnd = safe_load_pickle(bench.root / "gnd_demo.pkl")
    landmarks = ("astronaut", "camera")
    distractors = [n for n in gnd["imlist"] if n.startswith("distractor_")][:4]
    landmark_db = [n for n in gnd["imlist"] if n.split("_")[0] in landmarks]
    for n in landmark_db:
        _copy_as(jpg / f"{n}.jpg", root / "photos" / f"{n}.jpg")
    _copy_as(jpg / f"{distractors[0]}.jpg", root / "photos" / "old.jpg")
    for n in landmark_db[:2]:
        _copy_as(jpg / f"{n}.jpg", root / "few_photos" / f"{n}.jpg", width=160)
    for folder, names in (("more_photos", distractors[1:3]), ("more", distractors[2:4])):
        for n in names:
            _copy_as(jpg / f"{n}.jpg", root / folder / f"{n}.jpg")
    _copy_as(jpg / "query_astronaut.jpg", root / "query.jpg", width=640)
    _copy_as(jpg / "query_astronaut.jpg", root / "small" / "query.jpg", width=160)
    _copy_as(jpg / "astronaut_scale_rotate.jpg", root / "photo.jpg", width=200)
    # the revisited layout with two queries (indices remapped to the kept images)
    rox = root / "path" / "to" / "roxford5k"
    keep = landmark_db + distractors
    position, old = {n: i for i, n in enumerate(keep)}, list(gnd["imlist"])
    queries = [gnd["qimlist"].index(f"query_{lm}") for lm in landmarks]
    entries = [{"bbx": gnd["gnd"][q]["bbx"]} | {k: [position[old[j]] for j in gnd["gnd"][q][k] if old[j] in position]
                                                 for k in ("easy", "hard", "junk")} for q in queries]
    for n in keep + [gnd["qimlist"][q] for q in queries]:
        _copy_as(jpg / f"{n}.jpg", rox / "jpg" / f"{n}.jpg")
    with open(rox / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": keep, "qimlist": [gnd["qimlist"][q] for q in queries], "gnd": entries}, f)
    # labels.csv: three photos of each landmark and an unlabelled distractor
    rows = ["file,label"]
    for lm in landmarks:
        for n in [d for d in landmark_db if d.startswith(lm) and "tiny" not in d][:3]:
            _copy_as(jpg / f"{n}.jpg", root / "my_photos" / lm / f"{n}.jpg")
            rows.append(f"{lm}/{n}.jpg,{lm}")
    _copy_as(jpg / f"{distractors[0]}.jpg", root / "my_photos" / "street.jpg")
    (root / "my_photos" / "labels.csv").write_text("\n".join(rows + ["street.jpg,"]) + "\n", encoding="utf-8")
    if find_spec("torch") is not None:
        _random_delg_npz(root / "delg_r50.npz")


def _random_delg_npz(path: Path) -> None:
    """Random DELG weights as an ``.npz`` of arrays under glocal's parameter names."""
    import warnings

    import numpy as np

    from glocal.methods import create_extractor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, said loudly
        model = create_extractor("delg").model
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glocal.demo.synthetic import make_benchmark

    base = tmp_path_factory.mktemp("readme")
    root = base / "work"
    build_fixture(root, make_benchmark(base / "bench", seed=0, distractor_variants=1))
    return root


def _env(home: Path) -> dict[str, str]:
    closed = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOCAL_")}
    return env | {"PYTHONPATH": str(REPO), "GLOCAL_PROGRESS": "0", "GLOCAL_CACHE": str(home / "cache"),
                  "GLOCAL_WEIGHTS_URL": closed, "GLOCAL_DATASETS_URL": closed, "OMP_NUM_THREADS": "1",
                  "http_proxy": closed, "https_proxy": closed, "no_proxy": "127.0.0.1,localhost"}


def _argv(args: list[str]) -> list[str]:
    if args[0] == "glocal":
        return [sys.executable, "-m", "glocal", *args[1:]]
    assert args[:3] == ["python", "-m", "glocal"], args
    return [sys.executable, *args[1:]]


def _extra_installed(extra: str) -> bool:
    from glocal.methods.spec import EXTRA_MODULES

    return all(find_spec(m) is not None for m in EXTRA_MODULES[extra])


def _serve(argv: list[str], cwd: Path, env: dict[str, str]) -> str | None:
    """Start the server, wait for ``GET /health``, stop it; None when healthy, else what went wrong."""
    port = _closed_port()
    argv = [str(port) if a == "8080" else a for a in argv]
    proc = subprocess.Popen(argv, cwd=cwd, env=env | {"no_proxy": "*"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    body = json.loads(r.read())
                return None if r.status == 200 and body.get("images") else f"health answered {r.status} {body}"
            except OSError:
                time.sleep(0.5)
        return f"no answer on /health (exit status {proc.poll()})"
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode not in (0, -15):
            print(out)


def _check(command: str, args: list[str], expect: Expect, cwd: Path, env: dict[str, str]) -> str | None:
    """Run one variant of a README command; None when it did what :data:`EXPECT` says, else why not."""
    argv = _argv([expect.remap.get(a, a) for a in args])
    if expect.extra is not None and not _extra_installed(expect.extra):
        res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        lines = res.stderr.strip().splitlines()
        if res.returncode != 4 or f"pip install 'glocal[{expect.extra}]'" not in res.stderr or len(lines) != 1:
            return f"without [{expect.extra}]: exit {res.returncode}, stderr {res.stderr[-800:]!r}"
        return None
    if expect.serve:
        return _serve(argv, cwd, env)
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    problems = []
    if res.returncode != expect.status:
        problems.append(f"exit {res.returncode}, expected {expect.status}")
    problems += [f"stdout lacks {t!r}" for t in expect.stdout if t not in res.stdout]
    problems += [f"stderr lacks {t!r}" for t in expect.stderr if t not in res.stderr]
    problems += [f"{f} was not made" for f in expect.creates if not (cwd / f).exists()]
    if "Traceback" in res.stderr:
        problems.append("a traceback on stderr")
    if expect.status and len([ln for ln in res.stderr.splitlines() if ln.startswith("error:")]) != 1:
        problems.append("not exactly one 'error:' line")
    if problems:
        return f"{'; '.join(problems)}\n  stdout: {res.stdout[-1500:]}\n  stderr: {res.stderr[-1500:]}"
    return None


def chains(commands: list[str]) -> list[list[str]]:
    """The commands in groups that can run side by side: two commands that name the same output
    (:data:`PLACEHOLDERS` not marked "(input)") are in one group, which keeps README order."""
    outputs = {p for p, what in PLACEHOLDERS.items() if not what.endswith("(input)")}
    group_of: dict[str, int] = {}
    groups: list[list[str]] = []
    for command in commands:
        touched = {t for t in shlex.split(re.sub(r"[\[\]]", " ", command)) if t in outputs}
        ids = sorted({group_of[t] for t in touched if t in group_of})
        if not ids:
            groups.append([])
            ids = [len(groups) - 1]
        keep = ids[0]
        for other in ids[1:]:  # a command joining two groups merges them (in README order)
            groups[keep] = sorted(groups[keep] + groups[other], key=commands.index)
            groups[other] = []
            group_of.update({t: keep for t, g in group_of.items() if g == other})
        groups[keep].append(command)
        group_of.update({t: keep for t in touched})
    return [g for g in groups if g]


def test_chains_keep_commands_on_one_output_together() -> None:
    cmds = ["glocal index build photos/ --out my.glx", "glocal methods", "glocal extract photos/ --out feats/",
            "glocal index add my.glx more/", "glocal index build --features feats/ --out my2.glx"]
    assert chains(cmds) == [[cmds[0], cmds[3]], [cmds[1]], [cmds[2], cmds[4]]]


def test_every_readme_command_runs_as_printed(fixture_dir: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    commands = readme_commands(README.read_text(encoding="utf-8"))
    env = _env(tmp_path)
    unknown = [c for c in commands if c not in EXPECT]
    assert not unknown, f"README commands without an entry in EXPECT: {unknown}"

    def run_chain(chain: list[str]) -> list[tuple[str, float, str | None]]:
        done = []
        for command in chain:
            for args in variants(command):
                t0 = time.perf_counter()
                why = _check(command, args, EXPECT[command], fixture_dir, env)
                done.append((shlex.join(args), time.perf_counter() - t0, why))
        return done

    # independent chains two at a time (each command is one process, OMP_NUM_THREADS=1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [r for chain in pool.map(run_chain, chains(commands)) for r in chain]
    print("\n".join(f"{seconds:6.1f} s  {args}" for args, seconds, _ in results))
    failures = [f"{args}: {why}" for args, _, why in results if why is not None]
    assert not failures, "README commands that do not run as printed:\n" + "\n".join(failures)
