"""Which indexed image a user means: a stored name (``old.jpg``, as ``glocal search`` prints it) or the path
the user indexed (``photos/old.jpg``, relative to the working folder, or absolute).

Stored names are relative to the folder that was indexed, so ``glocal index build photos/`` stores
``photos/old.jpg`` as ``old.jpg``. :func:`resolve_names` accepts either form: first the stored name
itself, then the file the name was indexed from (``sources.jsonl``, compared as resolved paths), then the
one stored name the given path ends with (``photos/old.jpg`` ends with ``/old.jpg``). When nothing
matches it lists near matches (similar names, or names with the same file name).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from glocal.io.sources import SourceLog


@dataclass
class NameMatch:
    """The outcome of :func:`resolve_names`.

    :param found: given text -> stored name, for every given text that matched one image.
    :param missing: given text -> up to 5 near matches, for every given text that matched none.
    :param ambiguous: given text -> the stored names it could mean (its path ends with each of them).
    """

    found: dict[str, str] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)


def _resolved(path: str | Path, cwd: Path) -> Path:
    p = Path(path)
    return (p if p.is_absolute() else cwd / p).resolve()


def near_matches(text: str, names: Sequence[str], limit: int = 5) -> list[str]:
    """Stored names close to ``text``: same file name first, then by similarity (``difflib``)."""
    base = PurePosixPath(text.replace("\\", "/")).name
    same_file = [n for n in names if PurePosixPath(n).name == base]
    close = difflib.get_close_matches(text, names, n=limit, cutoff=0.6)
    close += difflib.get_close_matches(base, names, n=limit, cutoff=0.6)
    out: list[str] = []
    for n in same_file + close:
        if n not in out:
            out.append(n)
    return out[:limit]


def resolve_names(live: Iterable[str], sources: SourceLog, given: Sequence[str], cwd: Path | None = None) -> NameMatch:
    """Map each text in ``given`` to a stored image name of ``live`` (see the module docstring).

    :param live: the names an index can still return.
    :param sources: the index's source log (name -> file it was indexed from).
    :param cwd: folder a relative path is taken from (default: the working folder).
    """
    names = list(live)
    known = set(names)
    cwd = Path.cwd() if cwd is None else cwd
    by_path: dict[Path, list[str]] | None = None
    result = NameMatch()
    for text in given:
        if text in known:
            result.found[text] = text
            continue
        if by_path is None:  # read the source log only when a name is not a stored one
            by_path = {}
            for n in names:
                src = sources.lookup(n)
                if src is not None:
                    by_path.setdefault(src.resolve(), []).append(n)
        from_path = by_path.get(_resolved(text, cwd), [])
        posix = text.replace("\\", "/")
        ending = [n for n in names if posix.endswith("/" + n)]
        candidates = from_path if len(from_path) == 1 else ending
        if len(candidates) == 1:
            result.found[text] = candidates[0]
        elif len(candidates) > 1:
            result.ambiguous[text] = sorted(candidates)
        else:
            result.missing[text] = near_matches(text, names)
    return result
