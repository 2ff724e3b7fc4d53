"""Config files, overrides, and one clear message per bad value."""

import pytest

from cyclegan.config import load_config
from cyclegan.errors import ConfigError
from tests.conftest import ROOT, script


def test_default_yaml_is_the_paper():
    cfg = load_config(ROOT / "configs/default.yaml")
    assert (cfg.data.load_size, cfg.data.crop_size, cfg.model.n_blocks, cfg.train.batch_size) == (286, 256, 9, 1)
    assert (cfg.train.lambda_cycle, cfg.train.lambda_identity, cfg.train.pool_size) == (10.0, 0.5, 50)
    assert (cfg.train.lr, cfg.train.beta1, cfg.train.beta2) == (2e-4, 0.5, 0.999)
    assert (cfg.train.epochs, cfg.train.decay_epochs, cfg.train.gan_mode) == (100, 100, "lsgan")


def test_unquoted_no_means_no_mixed_precision():
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.lr=1e-4", "model.n_blocks=6", "resume=auto", "data.root=/x"])
    assert cfg.train.lr == 1e-4 and cfg.model.n_blocks == 6 and cfg.resume == "auto" and cfg.data.root == "/x"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        (["nonsense=1"], "unknown config key 'nonsense'"),
        (["train.batch_size=two"], "bad value for config key 'train.batch_size'"),
        (["data.crop_size=300"], "'data.crop_size' (300) is larger than data.load_size (286)"),
        (["train.lr=-1"], "'train.lr' must be positive"),
        (["model.norm=group"], "'model.norm' must be one of instance, batch, none"),
        (["train.mixed_precision=fp8"], "'train.mixed_precision' must be one of no, bf16, fp16"),
        (["train.lr"], "not of the form key=value"),
        (["train.diffaug=color,colour"], "'train.diffaug' takes a comma-separated list of color, translation, cutout"),
        (["train.diffaug=color,cutout,color"], "each at most once"),
        (["train.ema_decay=1"], "'train.ema_decay' must lie in [0, 1)"),
        (["tracking.warn_d_accuracy=2"], "'tracking.warn_d_accuracy' must lie in [0, 1]"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/default.yaml", overrides)
    assert message in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_script_prints_message_not_traceback(tmp_path):
    result = script("train.py", "--config", "configs/default.yaml", "train.bogus=3", check=False)
    assert result.returncode == 2
    assert "error: unknown config key 'train.bogus'" in result.stderr and "Traceback" not in result.stderr
