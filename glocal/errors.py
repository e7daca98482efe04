"""One error family: every failure a user can cause or meet is a :class:`GlocalError`.

Each subclass names a kind of problem and carries its own exit status; the message names the file, option
or index at fault and says what was expected. The command line prints ``error: <message>`` on one line and
exits with :attr:`GlocalError.exit_status` (``--debug`` shows the traceback); the service answers with a
4xx/5xx status chosen from the same class.

==============================  ===========  ==============================================================
class                           exit status  meaning
==============================  ===========  ==============================================================
:class:`BadInputError`          3            an image, dataset, label or query file is missing or unreadable
:class:`DamagedIndexError`      3            an index folder is missing, damaged, or of another version
:class:`BadCheckpointError`     3            a weights file cannot be read or does not fit the model
:class:`MissingDependencyError` 4            an optional extra (PyTorch, ONNX Runtime, FastAPI) is missing
:class:`BadOptionError`         2            an unknown option, or a value of the wrong type or range
:class:`BusyIndexError`         5            another process is writing to the index
:class:`StorageError`           3            the disk is full, over quota, read-only or not writable
any other exception             70           an internal error (a bug): ``error: internal error: ...``
==============================  ===========  ==============================================================

Exit status 0 means done, 1 done but some inputs were skipped (each named on stderr), 2 bad usage (click's
own usage errors too), 70 an internal error: an exception outside this family, a bug (``--debug`` shows the
traceback; please report it). A failed download (:class:`glocal.io.download.DownloadError`) is a
:class:`BadInputError`: the files the job needs could not be had, status 3.
Subclasses also derive from the built-in exception a caller would naturally catch (``ValueError``,
``OSError``, ``ImportError``), so older ``except ValueError`` code keeps working.
"""
from __future__ import annotations

#: The job finished.
EXIT_OK = 0
#: The job finished, but some input files were skipped (each named on stderr with the reason).
EXIT_PARTIAL = 1
#: Bad command-line usage: unknown option or key, bad value.
EXIT_USAGE = 2
#: Nothing could be done: an input, index or checkpoint is missing, unreadable or damaged.
EXIT_INPUT = 3
#: A needed optional dependency is not installed.
EXIT_DEPENDENCY = 4
#: The index is being written by another process.
EXIT_BUSY = 5
#: An unexpected exception (a bug): not a :class:`GlocalError`.
EXIT_INTERNAL = 70


class GlocalError(Exception):
    """Base of every error glocal raises on purpose; the message is one line for a user."""

    exit_status = EXIT_INPUT


class BadInputError(GlocalError, ValueError):
    """An input file (image, dataset, label file, feature file, query) is missing, unreadable or malformed."""

    exit_status = EXIT_INPUT


class DamagedIndexError(GlocalError, OSError):
    """An index folder is missing, not a glocal index, damaged, or of a version this glocal cannot read."""

    exit_status = EXIT_INPUT

    def __str__(self) -> str:  # OSError's own __str__ would show errno fields
        return str(self.args[0]) if self.args else ""


class BadCheckpointError(GlocalError, ValueError):
    """A weights file cannot be read, is unsafe, or does not fit the model it is loaded into."""

    exit_status = EXIT_INPUT


class MissingDependencyError(GlocalError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""

    exit_status = EXIT_DEPENDENCY


class BadOptionError(GlocalError, ValueError):
    """An option key is unknown or its value has the wrong type or range; the message lists the valid keys."""

    exit_status = EXIT_USAGE


class BusyIndexError(GlocalError, OSError):
    """Another process holds the index's writer lock."""

    exit_status = EXIT_BUSY

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageError(GlocalError, OSError):
    """Writing failed because of the storage (disk full, quota exceeded, read-only file system, permission
    denied); the message says what was being written and that nothing already committed was lost."""

    exit_status = EXIT_INPUT

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def require(module: str, extra: str, what: str) -> None:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install.

    :param module: importable module name, e.g. ``"torch"``.
    :param extra: the glocal extra that provides it, e.g. ``"deep"``.
    :param what: what needs it, e.g. ``"method 'delg'"``.
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{what} needs {module}, which is not installed: pip install 'glocal[{extra}]'") from None
