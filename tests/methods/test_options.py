"""Typed options: --set is routed to the one group that has the key, checked and converted; every error is
one line that names the valid keys."""
from __future__ import annotations

import json

import pytest

from glocal import methods
from glocal.errors import BadOptionError
from glocal.methods.options import parse_set, with_values
from glocal.methods.stages import AsmkIndexOptions, RerankOptions


def test_unknown_key_is_refused_with_the_valid_keys() -> None:
    spec = methods.get(methods.default_method())
    with pytest.raises(BadOptionError) as exc:
        spec.configure({"bogus": 1})
    message = str(exc.value)
    assert "\n" not in message and "unknown key 'bogus'" in message
    for key in ("max_keypoints", "codebook_size", "ratio", "qe"):
        assert key in message


def test_bad_value_names_the_key_and_the_type() -> None:
    spec = methods.get(methods.default_method())
    with pytest.raises(BadOptionError, match=r"ratio: expected a number, got 'abc'"):
        spec.configure(parse_set(["ratio=abc"]))
    with pytest.raises(BadOptionError, match="ratio must be in"):
        spec.configure({"ratio": 1.5})
    with pytest.raises(BadOptionError, match="estimator must be one of"):
        spec.configure({"estimator": "lmeds"})


def test_seed_reaches_the_extractor_or_is_refused_never_the_codebook() -> None:
    """``seed`` is the random initialisation of a network; the codebook's seed is ``codebook_seed``."""
    for spec in methods.all_specs():
        keys = spec.group_keys()
        if "seed" in keys["extractor"]:
            options = spec.configure({"seed": 7})
            assert options.extractor.seed == 7
            assert options.index == spec.index  # codebook seed untouched
        else:
            with pytest.raises(BadOptionError, match="unknown key 'seed'"):
                spec.configure({"seed": 7})
        assert all("seed" not in keys[g] for g in ("index", "search", "rerank"))


def test_values_are_converted_to_the_field_type() -> None:
    spec = methods.get(methods.default_method())
    options = spec.configure(parse_set(["ratio=0.8", "max_keypoints=500", "rerank_top=20", "mutual=false"]))
    assert options.rerank.ratio == 0.8 and options.rerank.rerank_top == 20 and options.rerank.mutual is False
    assert options.extractor.max_keypoints == 500
    assert spec.configure({"ratio": 1}).rerank.ratio == 1.0 and isinstance(spec.configure({"ratio": 1}).rerank.ratio, float)
    with pytest.raises(BadOptionError, match="expected an integer"):
        spec.configure({"max_keypoints": 2.5})
    with pytest.raises(BadOptionError, match="expected true or false"):
        spec.configure({"mutual": "yes"})


def test_group_prefix_picks_a_group() -> None:
    spec = methods.get(methods.default_method())
    assert spec.configure({"rerank.ratio": 0.7}).rerank.ratio == 0.7
    with pytest.raises(BadOptionError, match="unknown key 'index.ratio'"):
        spec.configure({"index.ratio": 0.7})


def test_options_round_trip_through_json() -> None:
    for spec in methods.all_specs():
        options = spec.defaults
        data = json.loads(json.dumps(options.to_dict()))
        assert spec.options_from_dict(data, "test") == options


def test_tuples_from_json_lists() -> None:
    for spec in methods.all_specs():
        if "scales" in spec.group_keys()["extractor"]:
            options = spec.configure(parse_set(["scales=[1.0, 0.5]"]))
            assert options.extractor.scales == (1.0, 0.5)
            with pytest.raises(BadOptionError, match="scales"):
                spec.configure(parse_set(["scales=abc"]))


def test_stage_options_check_combinations() -> None:
    with pytest.raises(BadOptionError, match="needs regions"):
        with_values(AsmkIndexOptions(), {"aggregation": "r-asmk"})
    with pytest.raises(BadOptionError, match="detector=PATH"):
        with_values(AsmkIndexOptions(), {"regions": "detector"})
    assert with_values(RerankOptions(), {"max_distance": None}).max_distance is None


def test_parse_set_reads_json_or_keeps_text() -> None:
    assert parse_set(["a=1", "b=[1, 2]", "c=text", "d=null", "e=x=y"]) == {
        "a": 1, "b": [1, 2], "c": "text", "d": None, "e": "x=y"}
    with pytest.raises(BadOptionError, match="expected KEY=VALUE"):
        parse_set(["novalue"])


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(BadOptionError, match="unknown method 'nope'; known methods: " + methods.default_method()):
        methods.get("nope")


def test_options_that_define_a_method_cannot_be_changed() -> None:
    fixed = [s for s in methods.all_specs() if s.fixed]
    assert fixed, "DELG* fixes binarize"
    for spec in fixed:
        for key, value in spec.fixed.items():
            assert getattr(spec.extractor, key) == value
            with pytest.raises(BadOptionError, match=f"{key} is .* cannot be changed"):
                spec.configure({key: not value if isinstance(value, bool) else None})
            assert spec.configure({key: value}) == spec.defaults
