"""The `model.keras` a run writes loads in a fresh process: with Keras alone where the backbone has
only Keras' own layers, after `import gdw_tf` for every backbone family the CLI offers (ResNet-32's
`OptionAShortcut` and the applications' `ApplicationPreprocessing` are gdw_tf's)."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import make_config

from gdw_tf.runs import run
from gdw_tf.runs import run_dir

# (name, --model, input shape, --mixed_precision): one per family of gdw_tf.nets.backbones, the
# application with gray images (repeated to RGB inside) and a non-trivial preprocess_input.
FAMILIES = (
    ("mlp", "mlp", (6,), False),
    ("small_cnn", "small_cnn", (12, 12, 1), False),
    ("small_cnn_bfloat16", "small_cnn", (12, 12, 1), True),
    ("resnet32", "resnet32", (16, 16, 3), False),
    ("application", "MobileNet", (32, 32, 1), False),
)
KERAS_ALONE = ("mlp", "small_cnn", "small_cnn_bfloat16")
NUM_CLASSES = 3


def _saved_backbone(model_name, input_shape, mixed_precision, path):
    """The backbone of the run's `GDWModel` (`run.build_gdw_model`) with random weights, saved
    as the run saves it; returns it."""
    config = make_config(model=model_name, mixed_precision=mixed_precision, seed=0)
    settings = run.RunSettings(
        dataset="own_data",
        model=model_name,
        class_names=None,
        num_classes=NUM_CLASSES,
        input_shape=list(input_shape),
        normalization={"mean": [0.0], "std": [1.0]},
        augment=False,
        outer_lr=100.0,
        jit_compile=False,
        num_train=8,
        num_meta=6,
        meta_batch_size=3,
        steps_per_epoch=1,
        num_replicas=1,
    )
    rng = np.random.default_rng(0)
    meta_data = (
        rng.uniform(0, 1, (6, *input_shape)).astype("float32"),
        np.arange(6) % NUM_CLASSES,
    )
    model = run.build_gdw_model(config, settings, meta_data)
    # Weights away from their initial values, BatchNorm statistics included (a trained model's).
    for variable in model.backbone.weights:
        values = rng.uniform(0.5, 1.5, variable.shape) * rng.choice([-1, 1], variable.shape)
        if "variance" in variable.path:
            values = np.abs(values)
        variable.assign(values.astype(keras.backend.standardize_dtype(variable.dtype)))
    model.backbone.save(path)
    return model.backbone


@pytest.mark.slow  # a fresh process that imports TensorFlow, five models built and loaded
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' own
def test_every_backbone_family_loads_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(1)
    expected = {}
    for name, model_name, input_shape, mixed_precision in FAMILIES:
        backbone = _saved_backbone(
            model_name, input_shape, mixed_precision, tmp_path / f"{name}.keras"
        )
        x = rng.uniform(0, 255, (2, *input_shape)).astype("float32")
        np.save(tmp_path / f"{name}_x.npy", x)
        logits = keras.ops.convert_to_numpy(backbone(x, training=False))
        expected[name] = logits.astype("float32")
    assert run_dir.MODEL_FILE == "model.keras"  # the file the run saves with backbone.save

    # Keras alone first (gdw_tf not imported), then every family after `import gdw_tf`.
    script = textwrap.dedent(
        """
        import json, pathlib, sys
        import keras, numpy as np

        folder, (alone, every) = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2])

        def predict(name):
            model = keras.saving.load_model(folder / f"{name}.keras")
            x = np.load(folder / f"{name}_x.npy")
            logits = keras.ops.convert_to_numpy(model(x, training=False))
            np.save(folder / f"{name}_{stage}.npy", logits.astype("float32"))

        stage = "keras"
        for name in alone:
            predict(name)
        assert not any(module.startswith("gdw_tf") for module in sys.modules)
        import gdw_tf  # noqa: F401
        stage = "gdw_tf"
        for name in every:
            predict(name)
        print(json.dumps("ok"))
        """
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path),
            json.dumps([KERAS_ALONE, [family[0] for family in FAMILIES]]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == "ok"
    for name, *_ in FAMILIES:
        stages = ("keras", "gdw_tf") if name in KERAS_ALONE else ("gdw_tf",)
        for stage in stages:
            loaded = np.load(tmp_path / f"{name}_{stage}.npy")
            np.testing.assert_allclose(
                loaded, expected[name], rtol=1e-5, err_msg=f"{name}, {stage}"
            )
        assert np.abs(expected[name]).max() > 1e-3, name
