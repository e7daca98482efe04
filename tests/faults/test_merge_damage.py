"""A segment merge refuses damaged input instead of copying it into a merged segment with a fresh, valid
checksum (which would hide the damage for good)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from glocal.errors import DamagedIndexError
from glocal.index.builder import build_index
from glocal.index.collection import Collection
from glocal.index.inverted_file import InvertedFile
from glocal.index.segment_file import ArrayFile

pytestmark = pytest.mark.faults


def _add_one(collection: Collection, donor, name: str) -> None:
    collection.append([dataclasses.replace(donor, name=name)])
    collection.index_pending()  # one segment per call


def test_merge_refuses_a_damaged_segment(demo_benchmark, tmp_path: Path) -> None:
    index = tmp_path / "m.glx"
    paths, names = demo_benchmark.db_paths[:3], demo_benchmark.db_names[:3]
    build_index(paths, names, index, settings={"codebook_size": 16}, progress=False).collection.close()
    collection = Collection.open(index, writable=True)
    try:
        ivf = collection.stage.index
        donor = collection.features[0]
        k = 0
        while len(ivf.segments) < ivf.settings.max_segments:  # the next add merges
            k += 1
            _add_one(collection, donor, f"extra-{k}")
        assert len(ivf.segments) == ivf.settings.max_segments  # no merge so far
        victim = ivf.root / ivf.segments[-1].entry["file"]  # the newest segment is in every merge run
        f = ArrayFile(victim)
        offset = f._table["postings" if "postings" in f._table else "codes"]["offset"]
        f.close()
        data = bytearray(victim.read_bytes())
        data[offset] ^= 0x01
        victim.write_bytes(bytes(data))
        files_before = sorted(p.name for p in ivf.root.iterdir())
        with pytest.raises(DamagedIndexError, match=rf"{victim.name}.*checksum mismatch.*refusing to merge"):
            _add_one(collection, donor, "trigger")
        after = sorted(p.name for p in ivf.root.iterdir())
        assert victim.read_bytes() == bytes(data)  # still there, still damaged: not laundered
        new = set(after) - set(files_before)
        assert all(n.startswith("seg-") for n in new) and len(new) <= 1  # the add's own segment, no merged one
        assert victim.name in {s.entry["file"] for s in ivf.segments}
    finally:
        collection.close()
    with pytest.raises(DamagedIndexError, match=victim.name):  # and a full check still finds it
        InvertedFile.open(index / "ivf", verify="full").close()
