"""One error family: every deliberate error is a GlocalError, and the CLI reports each as one line on stderr
and its exit status (``--debug`` adds the traceback); anything else is an internal error, status 70."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal import errors, methods
from glocal.cli.main import app
from glocal.errors import (
    EXIT_BUSY,
    EXIT_DEPENDENCY,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_USAGE,
    BadCheckpointError,
    BadInputError,
    BadOptionError,
    BusyIndexError,
    DamagedIndexError,
    GlocalError,
    MissingDependencyError,
    StorageError,
)

runner = CliRunner()

FAMILY = [(BadInputError, EXIT_INPUT), (DamagedIndexError, EXIT_INPUT), (BadCheckpointError, EXIT_INPUT),
          (MissingDependencyError, EXIT_DEPENDENCY), (BadOptionError, EXIT_USAGE), (BusyIndexError, EXIT_BUSY),
          (StorageError, EXIT_INPUT)]


def _adopted() -> list[tuple[type, type]]:
    """The older, more specific error classes and the family member each now belongs to."""
    from glocal.evaluate.datasets import DatasetError
    from glocal.evaluate.download import DownloadError
    from glocal.index.global_files import GlobalIndexError
    from glocal.index.manifest import IndexFormatError
    from glocal.index.segment_file import SegmentFileError
    from glocal.io.feature_file import FeatureFileError
    from glocal.io.images import ImageReadError
    from glocal.io.safe_pickle import UnsafePickleError
    from glocal.weights import WeightsError

    return [(ImageReadError, BadInputError), (FeatureFileError, DamagedIndexError),
            (UnsafePickleError, BadInputError), (DatasetError, BadInputError), (DownloadError, BadInputError),
            (WeightsError, BadCheckpointError), (SegmentFileError, DamagedIndexError),
            (GlobalIndexError, DamagedIndexError), (IndexFormatError, DamagedIndexError)]


def test_older_error_classes_joined_the_family() -> None:
    import pickle

    from glocal.io.images import ImageReadError
    from glocal.io.safe_pickle import UnsafePickleError

    for cls, parent in _adopted():
        assert issubclass(cls, parent), cls
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)  # older ``except`` clauses still catch them
    assert issubclass(ImageReadError, ValueError) and str(ImageReadError("a.jpg", "truncated")) == "a.jpg: truncated"


def test_checkpoint_errors_are_one_class() -> None:
    pytest.importorskip("torch")
    from glocal.models import checkpoints, how_fire_checkpoints

    assert how_fire_checkpoints.CheckpointError is checkpoints.CheckpointError
    assert issubclass(checkpoints.CheckpointError, BadCheckpointError)
    assert issubclass(checkpoints.CheckpointMismatchError, checkpoints.CheckpointError)


def _raise(exc: BaseException):
    def raiser(*args: object, **kwargs: object) -> None:
        raise exc
    return raiser


@pytest.mark.parametrize(("cls", "status"), FAMILY, ids=[c.__name__ for c, _ in FAMILY])
def test_each_family_member_is_one_line_and_its_exit_status(cls: type[GlocalError], status: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert cls.exit_status == status
    monkeypatch.setattr(methods, "all_specs", _raise(cls("photos/a.jpg: something is wrong\n  on two lines")))
    res = runner.invoke(app, ["methods"], env={"GLOCAL_DEBUG": None})
    assert res.exit_code == status
    assert res.output == "error: photos/a.jpg: something is wrong on two lines\n"
    assert not isinstance(res.exception, GlocalError)  # handled: only SystemExit left


def test_adopted_classes_map_through_their_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    from glocal.io.images import ImageReadError

    monkeypatch.setattr(methods, "all_specs", _raise(ImageReadError("q.jpg", "not an image file")))
    res = runner.invoke(app, ["methods"])
    assert (res.exit_code, res.output) == (EXIT_INPUT, "error: q.jpg: not an image file\n")


def test_unexpected_exception_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(methods, "all_specs", _raise(KeyError("boom")))
    res = runner.invoke(app, ["methods"], env={"GLOCAL_DEBUG": None})
    assert res.exit_code == EXIT_INTERNAL == 70
    assert res.output == "error: internal error: KeyError: 'boom' (run with --debug for the traceback)\n"


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_shows_the_traceback(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(methods, "all_specs", _raise(DamagedIndexError("x.glx: damaged")))
    args, env = (["--debug", "methods"], {"GLOCAL_DEBUG": None}) if how == "option" else (["methods"],
                                                                                        {"GLOCAL_DEBUG": "1"})
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == EXIT_INPUT
    assert "Traceback (most recent call last)" in res.output and "glocal.errors.DamagedIndexError" in res.output
    assert res.output.splitlines()[-1] == "error: x.glx: damaged"
    res = runner.invoke(app, ["methods"], env={"GLOCAL_DEBUG": None})  # not sticky between runs
    assert res.output == "error: x.glx: damaged\n"


def test_real_errors(tmp_path: Path, photo_path: Path) -> None:
    res = runner.invoke(app, ["methods", "show", "nope"])  # BadOptionError from the registry
    assert res.exit_code == EXIT_USAGE and len(res.output.splitlines()) == 1
    res = runner.invoke(app, ["search", str(tmp_path / "none.glx"), str(photo_path)])  # DamagedIndexError
    assert res.exit_code == EXIT_INPUT and res.output.startswith("error: ") and len(res.output.splitlines()) == 1
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["weights", "download", "nope"])  # WeightsError (a BadCheckpointError)
    assert res.exit_code == EXIT_INPUT and res.output.startswith("error: unknown weights 'nope'")


def test_usage_errors_keep_status_2() -> None:
    assert runner.invoke(app, ["methods", "show"]).exit_code == 2  # missing argument
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
    assert runner.invoke(app, ["methods", "--no-such-option"]).exit_code == 2


def test_python_dash_m_and_the_console_script_map_errors_too() -> None:
    """``python -m glocal`` runs the same function as the ``glocal`` console script (pyproject.toml)."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert 'glocal = "glocal.cli.main:run"' in text
    done = subprocess.run([sys.executable, "-m", "glocal", "methods", "show", "nope"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == EXIT_USAGE and done.stdout == ""
    assert done.stderr.startswith("error: unknown method 'nope'") and len(done.stderr.splitlines()) == 1


def test_exit_statuses_are_documented() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for status in (0, 1, 2, 3, 4, 5, 70):
        assert f"| `{status}` |" in readme
    for cls, status in FAMILY:
        assert f":class:`{cls.__name__}`" in (errors.__doc__ or "") and cls.__name__ in readme
        assert any(line.startswith(f"| `{status}` |") and cls.__name__ in line for line in readme.splitlines())
    assert "70" in (errors.__doc__ or "")
