"""The flags of `python -m gdw_tf.train`: every flag file parses, precedence, validators."""

import dataclasses
import glob
import inspect
import os
import re

import keras
import pytest
from absl import flags

import gdw_tf
from gdw_tf.runs import config as config_lib

FLAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")
FLAG_FILES = sorted(glob.glob(os.path.join(FLAGS_DIR, "*.flags")))


def _parse(*args):
    """Parses `args` with fresh flags; returns the `Config`."""
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["prog", *args])
    return config_lib.Config.from_flags(flag_values)


def test_flags_and_config_fields_are_the_same():
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    names = {field.name for field in dataclasses.fields(config_lib.Config)}
    assert names == set(flag_values)
    for field in dataclasses.fields(config_lib.Config):
        assert flag_values[field.name].default == field.default, field.name


def test_a_hand_built_model_has_the_command_lines_defaults():
    signature = inspect.signature(gdw_tf.GDWModel.__init__).parameters
    shared = [name for name in signature if name in config_lib.Config.__dataclass_fields__]
    # Every setting of the step is an argument of the model and a flag; get_config saves them.
    step_settings = {field.name for field in dataclasses.fields(gdw_tf.ModelSettings)}
    assert set(shared) == step_settings >= {"method", "meta_batch_size", "weight_net_lr"}
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    config = gdw_tf.GDWModel(backbone, 2, method="ce", weight_net_hidden=7).get_config()
    assert step_settings <= set(config) and config["weight_net_hidden"] == 7
    for name in shared:
        assert signature[name].default == getattr(config_lib.DEFAULTS, name), name


def test_defaults_are_the_reference_recipe():
    config = _parse("--output_dir=out")
    assert (config.dataset, config.noise, config.ratio, config.method, config.model) == (
        "cifar10",
        "uniform",
        0.4,
        "gdw",
        "auto",
    )  # auto: resnet32 on --dataset
    assert (config.epochs, config.batch_size, config.meta_batch_size, config.num_meta) == (
        80,
        100,
        100,
        1000,
    )
    assert (config.lr, config.momentum, config.l2, config.clip) == (0.1, 0.9, 5e-4, 0.2)
    assert config.outer_lr is None  # by the number of classes


def test_the_flag_files_cover_the_papers_settings():
    names = {os.path.basename(path)[: -len(".flags")] for path in FLAG_FILES}
    for dataset in ("cifar10", "cifar100", "fashion_mnist"):
        for setting in ("uniform_40", "uniform_60", "flip_20", "flip_40"):
            assert f"{dataset}_{setting}" in names
    for dataset in ("cifar10", "fashion_mnist"):
        for setting in (
            "imbalance_10",
            "imbalance_100",
            "imbalance_200",
            "uniform_40_imbalance_10",
        ):
            assert f"{dataset}_{setting}" in names


@pytest.mark.parametrize("path", FLAG_FILES, ids=os.path.basename)
def test_every_flag_file_parses_into_its_setting(path):
    config = _parse(f"--flagfile={path}", "--output_dir=out")
    name = os.path.basename(path)[: -len(".flags")]
    assert name.startswith(config.dataset + "_")
    setting = name[len(config.dataset) + 1 :].split("_")
    if setting[0] in ("uniform", "flip"):
        assert config.noise == setting[0] and config.ratio == int(setting[1]) / 100
    else:
        assert config.noise == "none"
    if "imbalance" in setting:
        assert config.imbalance == float(setting[setting.index("imbalance") + 1])
    else:
        assert config.imbalance == 1.0
    assert config.method == "gdw"
    if config.dataset == "fashion_mnist":
        assert (config.model, config.augment, config.epochs) == ("small_cnn", "false", 15)
    else:
        assert (config.model, config.augment, config.epochs) == ("resnet32", "true", 80)
    assert config.outer_lr == (1000 if config.dataset == "cifar100" else 100)


def test_precedence_defaults_then_flagfile_then_command_line(tmp_path):
    flagfile = tmp_path / "setting.flags"
    flagfile.write_text("# a comment\n--ratio=0.6\n--epochs=7\n")
    config = _parse(f"--flagfile={flagfile}", "--epochs=3", "--output_dir=out")
    assert config.ratio == 0.6  # from the file, over the default 0.4
    assert config.epochs == 3  # from the command line, over the file
    assert config.batch_size == 100  # default, in neither
    # absl applies flags left to right: a flag file given last wins.
    assert _parse("--epochs=3", f"--flagfile={flagfile}", "--output_dir=out").epochs == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ratio=1.5"], "--ratio must lie in [0, 1]"),
        (["--ratio=-0.1"], "--ratio must lie in [0, 1]"),
        (["--imbalance=0.5"], "--imbalance is n_max/n_min and must be ≥ 1"),
        (["--batch_size=0"], "--batch_size must be a positive integer"),
        (["--batch_size=-5"], "--batch_size must be a positive integer"),
        (["--epochs=0"], "--epochs must be a positive integer"),
        (["--num_meta=0"], "--num_meta must be a positive"),
        (["--meta_batch_size=0"], "--meta_batch_size must be a positive integer"),
        (["--num_meta=50"], "--meta_batch_size=100 exceeds the 50 examples of the meta set"),
        (["--lr=0"], "--lr must be > 0"),
        (["--momentum=1"], "--momentum must lie in [0, 1)"),
        (["--outer_lr=-2"], "--outer_lr must be ≥ 0"),
        (["--clip=0"], "--clip must be > 0"),
        (["--dataset=no_such_dataset"], "--dataset=no_such_dataset is unknown"),
        (["--data_dir=/no/such/directory"], "--data_dir is not an existing directory"),
        (["--method=mwnet2"], "value should be one of"),
        (["--noise=flip2"], "value should be one of"),
        (["--model=resnet18"], "value should be one of"),
        (["--augment=yes"], "value should be one of"),
        (["--jit_compile=maybe"], "value should be one of"),
        (["--meta_grad=fd"], "value should be one of"),
        (["--meta_interval=0"], "--meta_interval must be a positive integer"),
        (["--seed=-1"], "--seed must be an integer in [0, 2**32)"),
        (
            ["--seed=5000000000"],
            "--seed must be an integer in [0, 2**32)",
        ),  # NumPy's seeds are 32-bit
        (["--method=l2rw", "--meta_interval=2"], "l2rw has none: use --meta_interval=1"),
        (["--meta_scope=top"], "--meta_scope must be all, head or last:k"),
        (["--meta_scope=last:0"], "--meta_scope must be all, head or last:k"),
    ],
)
def test_impossible_values_are_refused_at_parse_time(args, message):
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
        _parse(*args, "--output_dir=out")


def test_output_dir_is_required():
    with pytest.raises(flags.IllegalFlagValueError, match="output_dir"):
        _parse()


def test_known_datasets_pass_the_dataset_validator():
    for dataset in ("cifar10", "cifar100", "fashion_mnist", "mnist", "svhn_cropped"):
        assert _parse(f"--dataset={dataset}", "--output_dir=out").dataset == dataset


def test_a_dataset_prepared_in_the_data_dir_passes_the_dataset_validator(tmp_path):
    with pytest.raises(flags.IllegalFlagValueError, match="there is no .*my_photos"):
        _parse("--dataset=my_photos", f"--data_dir={tmp_path}", "--output_dir=out")
    (tmp_path / "my_photos" / "1.0.0").mkdir(parents=True)  # Where TFDS prepares it.
    config = _parse("--dataset=my_photos", f"--data_dir={tmp_path}", "--output_dir=out")
    assert config.dataset == "my_photos"


FLOAT_FLAGS = (
    "ratio",
    "imbalance",
    "lr",
    "momentum",
    "l2",
    "outer_lr",
    "clip",
    "weight_net_lr",
    "weight_net_l2",
)


def test_every_float_flag_is_checked_for_nan_and_inf():
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    assert {name for name in flag_values if flag_values[name].flag_type() == "float"} == set(
        FLOAT_FLAGS
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FLAGS)
def test_non_finite_floats_are_refused_at_parse_time(name, value):
    with pytest.raises(
        flags.IllegalFlagValueError,
        match=re.escape(f"--{name} must be a finite number (not nan or inf)"),
    ):
        _parse(f"--{name}={value}", "--output_dir=out")


def test_the_real_world_recipe_parses_into_a_pretrained_resnet50(tmp_path):
    (tmp_path / "noisy.txt").write_text("a.jpg 0\n")
    config = _parse(
        f"--flagfile={os.path.join(FLAGS_DIR, 'real_world', 'resnet50_imagenet.flags')}",
        f"--train_data={tmp_path / 'noisy.txt'}",
        "--output_dir=out",
    )
    assert (config.model, config.model_weights, config.image_size) == ("ResNet50", "imagenet", 224)
    assert (config.lr, config.momentum, config.l2, config.batch_size, config.epochs) == (
        0.01,
        0.9,
        1e-3,
        32,
        10,
    )
    with pytest.raises(flags.IllegalFlagValueError, match="needs a keras.applications --model"):
        _parse("--model_weights=imagenet", "--model=small_cnn", "--output_dir=out")
