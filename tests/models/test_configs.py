"""The extractor configs: importable without torch, one line of help per field, shared fields and checks."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glocal.models.configs import (
    DELG_GLOBAL_SCALES,
    DELG_LOCAL_SCALES,
    DOLG_SCALES,
    EXTRACTOR_CONFIGS,
    PAPER_SCALES,
    DeepExtractorConfig,
    DelgConfig,
    DolgConfig,
    FireConfig,
    HowConfig,
    VitgalConfig,
)

ROOT = Path(__file__).resolve().parents[2]
BASE_FIELDS = ("checkpoint", "preprocessing", "max_side", "device", "batch_size", "seed", "runtime")

NO_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
    from glocal.models import configs

    for cls in configs.EXTRACTOR_CONFIGS:
        cls(batch_size=2)
    configs.DelgConfig.tf_release("delg.npz", gldv2_clean=True)
    configs.DolgConfig.pytorch_port("dolg.pyth")
    try:
        configs.HowConfig(runtime="onnx")
    except ValueError as exc:
        assert "runtime" in str(exc)
    else:
        raise AssertionError("a bad runtime was accepted")
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
    print("ok")
""")


def test_configs_import_and_build_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("cls", EXTRACTOR_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_one_line_of_help(cls: type) -> None:
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        assert isinstance(help_text, str) and help_text.strip(), f"{cls.__name__}.{f.name} has no help"
        assert "\n" not in help_text, f"{cls.__name__}.{f.name}: help is not one line"
        choices = f.metadata.get("choices")
        if choices is not None:
            assert isinstance(choices, tuple) and f.default in choices, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("cls", EXTRACTOR_CONFIGS, ids=lambda c: c.__name__)
def test_shared_base_fields_and_round_trip(cls: type) -> None:
    assert issubclass(cls, DeepExtractorConfig)
    names = [f.name for f in dataclasses.fields(cls)]
    assert tuple(names[:len(BASE_FIELDS)]) == BASE_FIELDS
    config = cls(batch_size=3, seed=5)
    assert config.batch_size == 3 and config.seed == 5
    assert cls(**dataclasses.asdict(config)) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("cls", [HowConfig, FireConfig])
def test_how_and_fire_take_batch_size(cls: type) -> None:
    assert cls().batch_size == 4 and cls(batch_size=8).batch_size == 8
    assert "max_batch" not in {f.name for f in dataclasses.fields(cls)}
    with pytest.raises(TypeError):
        cls(max_batch=2)
    with pytest.raises(ValueError, match="batch_size"):
        cls(batch_size=0)


@pytest.mark.parametrize("cls", EXTRACTOR_CONFIGS, ids=lambda c: c.__name__)
def test_bad_runtime_and_preprocessing_name_the_field(cls: type) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__}: runtime must be"):
        cls(runtime="tensorrt")
    with pytest.raises(ValueError, match=f"{cls.__name__}: preprocessing must be one of .*'caffe'"):
        cls(preprocessing="caffe")


def test_runtime_choices_per_model() -> None:
    for cls in (DelgConfig, DolgConfig, VitgalConfig):
        assert cls(runtime="onnx").runtime == "onnx"
        with pytest.raises(ValueError, match="CPU only"):
            cls(runtime="onnx", device="cuda:0")
        assert cls(runtime="onnx", device="cpu:0").device == "cpu:0"
    for cls in (HowConfig, FireConfig):
        assert cls(runtime="torch-bf16").runtime == "torch-bf16"
        with pytest.raises(ValueError, match="runtime must be 'torch' or 'torch-bf16'"):
            cls(runtime="onnx")


def test_defaults_are_the_papers() -> None:
    assert DELG_LOCAL_SCALES == (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
    assert DELG_GLOBAL_SCALES == (0.7071, 1.0, 1.4142)
    assert DOLG_SCALES == (0.3535, 0.5, 0.7071, 1.0, 1.4142)
    assert PAPER_SCALES == (2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25)
    assert DelgConfig().scales == DELG_LOCAL_SCALES and DelgConfig().global_scales == DELG_GLOBAL_SCALES
    assert DolgConfig().scales == VitgalConfig().scales == DOLG_SCALES and VitgalConfig().global_scales == (1.0,)
    assert HowConfig().scales == FireConfig().scales == PAPER_SCALES
    tf = DelgConfig.tf_release("d.npz", gldv2_clean=True, max_side=512)
    assert (tf.backbone_style, tf.block3_strides, tf.preprocessing, tf.attention_threshold, tf.max_side) == (
        "tf", True, "tf", 454.6, 512)
    port = DolgConfig.pytorch_port("d.pyth")
    assert not port.multi_atrous and port.preprocessing == "imagenet-bgr"


def test_scales_are_normalised_and_checked() -> None:
    assert DelgConfig(scales=[1, 0.5], global_scales=[]).scales == (1.0, 0.5)
    assert VitgalConfig(scales=(), global_scales=[1]).global_scales == (1.0,)
    assert HowConfig(scales=[2, 1]).scales == (2.0, 1.0)
    assert DolgConfig(max_side=None).max_side is None
    with pytest.raises(ValueError, match="scales and global_scales are both empty"):
        DelgConfig(scales=(), global_scales=())
    with pytest.raises(ValueError, match="DolgConfig: scales"):
        DolgConfig(scales=())
    with pytest.raises(ValueError, match="FireConfig: scales must be positive"):
        FireConfig(scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="HowConfig: max_keypoints"):
        HowConfig(max_keypoints=0)
    with pytest.raises(ValueError, match="DolgConfig: fusion must be one of"):
        DolgConfig(fusion="sum")
    with pytest.raises(ValueError, match="VitgalConfig: variant must be 's12' or 's24'"):
        VitgalConfig(variant="b16")


def test_model_config_builds_the_network_config() -> None:
    pytest.importorskip("torch")
    from glocal.models.delg import DelgModelConfig
    from glocal.models.dolg import DolgModelConfig
    from glocal.models.vitgal import VitgalModelConfig

    assert DelgModelConfig.from_extractor(DelgConfig.tf_release("d.npz")).block3_strides
    assert not DolgModelConfig.from_extractor(DolgConfig.pytorch_port("d.pyth")).multi_atrous
    vitgal = VitgalModelConfig.from_extractor(VitgalConfig(embed_dim=48, depth=1, num_heads=4))
    assert vitgal.xcit_config().embed_dim == 48
