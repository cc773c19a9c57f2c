"""Tests of the serving export: a SavedModel that a process without gdw_tf loads and serves.

The reloaded model runs in a subprocess that never imports gdw_tf (asserted there), at two batch
sizes, and must give the probabilities and classes of the in-process backbone on the same
normalised images.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from gdw_tf import export
from gdw_tf.data import input_pipeline
from gdw_tf.nets import backbones
from gdw_tf.runs import run_dir as run_dir_lib
from gdw_tf.runs import serving

BATCH_SIZES = (1, 7)  # Also in LOADER.
TF_STARTUP_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")

# docs/SERVING.md's Python snippet, plus checks: it runs in a fresh interpreter without gdw_tf.
LOADER = r"""
import sys

import numpy as np
import tensorflow as tf

export_dir, images_path, results_path = sys.argv[1:]
images = np.load(images_path)

loaded = tf.saved_model.load(export_dir)
serve = loaded.signatures["serve"]
outputs = {}
for n in (1, 7):  # BATCH_SIZES
    result = serve(images=tf.constant(images[:n], tf.uint8))
    outputs[f"probabilities_{n}"] = result["probabilities"].numpy()
    outputs[f"classes_{n}"] = result["classes"].numpy()
default = loaded.signatures["serving_default"](images=tf.constant(images[:2], tf.uint8))
outputs["default_probabilities_2"] = default["probabilities"].numpy()

assert "gdw_tf" not in sys.modules, [name for name in sys.modules if name.startswith("gdw_tf")]
np.savez(results_path, **outputs)
"""


def subprocess_env():
    """The environment of a child Python: quiet TensorFlow, CPU only, no gdw_tf on the path."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    return env


def serve_in_fresh_process(export_dir, images, tmp_path):
    """Runs `LOADER` on `images` in a new interpreter; returns its outputs as a dict."""
    images_path, results_path = tmp_path / "images.npy", tmp_path / "results.npz"
    np.save(images_path, images)
    completed = subprocess.run(
        [sys.executable, "-c", LOADER, str(export_dir), str(images_path), str(results_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,  # Not the repository root, so `import gdw_tf` could not come from cwd.
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(results_path) as results:
        return dict(results)


def run_cli(*args):
    """Runs `python -m gdw_tf.export` with `args`; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "gdw_tf.export", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )


def trained_looking_backbone(builder, input_shape, num_classes, mean, std):
    """A backbone whose BatchNorm moving statistics have moved away from their initial values."""
    backbone = builder(input_shape, num_classes)
    rng = np.random.default_rng(1)
    for _ in range(3):
        images = rng.integers(0, 256, (16,) + input_shape, dtype=np.uint8)
        backbone(input_pipeline.normalize(images, mean, std), training=True)
    return backbone


def expected_outputs(backbone, images, mean, std):
    """(probabilities, classes) of the in-process backbone in inference mode."""
    logits = backbone(input_pipeline.normalize(images, mean, std), training=False)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    return probabilities, probabilities.argmax(axis=-1)


def assert_serves_like(backbone, results, images, mean, std):
    """The reloaded model's outputs at every batch size equal the backbone's."""
    for n in BATCH_SIZES:
        probabilities, classes = expected_outputs(backbone, images[:n], mean, std)
        assert results[f"probabilities_{n}"].shape == probabilities.shape
        assert results[f"probabilities_{n}"].dtype == np.float32
        assert results[f"classes_{n}"].dtype == np.int64
        np.testing.assert_allclose(
            results[f"probabilities_{n}"], probabilities, rtol=1e-5, atol=1e-7
        )
        np.testing.assert_array_equal(results[f"classes_{n}"], classes)
    np.testing.assert_allclose(
        results["default_probabilities_2"],
        results[f"probabilities_{BATCH_SIZES[-1]}"][:2],
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "builder, input_shape, num_classes",
    [(backbones.small_cnn, (28, 28, 1), 10), (backbones.resnet32, (8, 8, 3), 3)],
    ids=["small_cnn", "resnet32"],
)
def test_exported_model_serves_same_predictions_without_gdw_tf(
    builder, input_shape, num_classes, tmp_path
):
    channels = input_shape[-1]
    mean, std = np.linspace(0.3, 0.5, channels), np.linspace(0.2, 0.3, channels)
    backbone = trained_looking_backbone(builder, input_shape, num_classes, mean, std)
    export_dir = tmp_path / "export"

    assert serving.export_serving(backbone, str(export_dir), mean, std) == str(export_dir)

    images = np.random.default_rng(2).integers(0, 256, (7,) + input_shape, dtype=np.uint8)
    results = serve_in_fresh_process(export_dir, images, tmp_path)
    assert_serves_like(backbone, results, images, mean, std)
    # Inference mode: a batch of one is classified as it is within a batch of seven.
    np.testing.assert_allclose(
        results["probabilities_1"], results["probabilities_7"][:1], rtol=1e-5, atol=1e-7
    )


def test_serving_signature_takes_uint8_images_of_any_batch_size(tmp_path):
    backbone = backbones.small_cnn((28, 28, 1), 4)
    serving.export_serving(backbone, str(tmp_path), [0.5], [0.25])
    signature = tf.saved_model.load(str(tmp_path)).signatures["serve"]
    _, inputs = signature.structured_input_signature
    assert inputs == {"images": tf.TensorSpec((None, 28, 28, 1), tf.uint8, name="images")}
    assert set(signature.structured_outputs) == {"probabilities", "classes"}
    assert signature.structured_outputs["probabilities"].shape.as_list() == [None, 4]


def test_rest_request_body_of_the_readme_holds_the_signature_input(tmp_path):
    backbone = backbones.small_cnn((28, 28, 1), 4)
    serving.export_serving(backbone, str(tmp_path), [0.5], [0.25])
    images = np.random.default_rng(4).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)

    # As in docs/SERVING.md: the body of a TF Serving REST predict request.
    body = json.dumps({"signature_name": "serve", "instances": images.tolist()})

    request = json.loads(body)
    signature = tf.saved_model.load(str(tmp_path)).signatures[request["signature_name"]]
    served = signature(images=tf.constant(request["instances"], tf.uint8))
    probabilities, classes = expected_outputs(backbone, images, [0.5], [0.25])
    np.testing.assert_allclose(served["probabilities"].numpy(), probabilities, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(served["classes"].numpy(), classes)


@pytest.mark.parametrize(
    "mean, std, message",
    [([0.5, 0.5], [0.2, 0.2], "one entry per channel"), ([0.5], [0.0], "std > 0")],
)
def test_export_serving_refuses_bad_statistics(mean, std, message, tmp_path):
    backbone = backbones.small_cnn((28, 28, 1), 10)
    with pytest.raises(ValueError, match=message):
        serving.export_serving(backbone, str(tmp_path / "export"), mean, std)
    assert not (tmp_path / "export").exists()


def test_export_serving_refuses_a_backbone_that_does_not_take_images(tmp_path):
    backbone = backbones.mlp((20,), 5)
    with pytest.raises(ValueError, match=r"images \[N, H, W, C\]"):
        serving.export_serving(backbone, str(tmp_path / "export"), [0.5], [0.2])


# --------------------------------------------------------------------------------------------
# Command line


def write_run_dir(run_dir, backbone, mean, std, **config):
    """A run directory as `gdw_tf.train` leaves it: `model.keras` and `config.json`."""
    run_dir.mkdir()
    backbone.save(run_dir / "model.keras")
    config = {
        "dataset": "fake",
        "num_classes": backbone.outputs[0].shape[-1],
        "input_shape": list(backbone.inputs[0].shape[1:]),
        "normalization": {"mean": list(mean), "std": list(std)},
        **config,
    }
    (run_dir / "config.json").write_text(json.dumps(config))


def assert_one_line_error(completed, *fragments):
    """A failed CLI call: non-zero exit, one line on stderr naming the problem, no traceback.

    TensorFlow's own start-up log (glog-style lines, which `TF_CPP_MIN_LOG_LEVEL` no longer
    silences) is not ours and is left out.
    """
    assert completed.returncode != 0
    lines = [
        line
        for line in completed.stderr.splitlines()
        if line.strip() and not TF_STARTUP_LOG.match(line)
    ]
    assert "Traceback" not in completed.stderr
    assert len(lines) == 1, completed.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_cli_exports_a_run_dir_and_refuses_to_overwrite(tmp_path):
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    backbone = trained_looking_backbone(backbones.resnet32, (8, 8, 3), 3, mean, std)
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    write_run_dir(run_dir, backbone, mean, std)

    completed = run_cli(f"--run_dir={run_dir}", f"--export_dir={export_dir}")
    assert completed.returncode == 0, completed.stderr[-3000:]
    images = np.random.default_rng(3).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    assert_serves_like(
        backbone, serve_in_fresh_process(export_dir, images, tmp_path), images, mean, std
    )

    saved_model = (export_dir / "saved_model.pb").read_bytes()
    refused = run_cli(f"--run_dir={run_dir}", f"--export_dir={export_dir}")
    assert_one_line_error(refused, str(export_dir), "--overwrite")
    assert (export_dir / "saved_model.pb").read_bytes() == saved_model


def test_cli_rejects_a_missing_run_dir_in_one_line(tmp_path):
    flag_values = flags.FlagValues()
    export.define_flags(flag_values)
    flag_values(["prog", f"--run_dir={tmp_path / 'nowhere'}", f"--export_dir={tmp_path / 'x'}"])
    with pytest.raises(SystemExit) as exit_info:
        export.export_from_flags(flag_values)
    message = str(exit_info.value.code)
    assert message.startswith("gdw_tf.export: error: ") and "\n" not in message
    assert "nowhere" in message and "does not exist" in message
    assert not (tmp_path / "x").exists()


def test_cli_requires_both_directories():
    flag_values = flags.FlagValues()
    export.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match="export_dir"):
        flag_values(["prog", "--run_dir=somewhere"])


def test_export_run_overwrites_only_when_asked(tmp_path):
    backbone = backbones.small_cnn((28, 28, 1), 10)
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    write_run_dir(run_dir, backbone, [0.3], [0.35])
    export_dir.mkdir()
    (export_dir / "stale.txt").write_text("an earlier export")

    with pytest.raises(ValueError, match="--overwrite"):
        run_dir_lib.export_run(str(run_dir), str(export_dir))
    assert (export_dir / "stale.txt").exists()

    assert run_dir_lib.export_run(str(run_dir), str(export_dir), overwrite=True) == str(export_dir)
    assert not (export_dir / "stale.txt").exists()
    assert tf.saved_model.contains_saved_model(str(export_dir))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export", "run"]


@pytest.mark.parametrize(
    "broken, message",
    [
        ("no_model", "model.keras is missing"),
        ("no_config", "config.json is missing"),
        ("bad_json", "is unreadable"),
        ("no_normalization", "normalization"),
        ("corrupt_model", "Could not load"),
        ("wrong_num_classes", "num_classes=7"),
    ],
)
def test_export_run_names_the_problem_with_a_run_dir(broken, message, tmp_path):
    run_dir = tmp_path / "run"
    config = {"num_classes": 7} if broken == "wrong_num_classes" else {}
    write_run_dir(run_dir, backbones.small_cnn((28, 28, 1), 10), [0.3], [0.35], **config)
    if broken == "no_model":
        (run_dir / "model.keras").unlink()
    elif broken == "no_config":
        (run_dir / "config.json").unlink()
    elif broken == "bad_json":
        (run_dir / "config.json").write_text("{not json")
    elif broken == "no_normalization":
        (run_dir / "config.json").write_text(json.dumps({"num_classes": 10}))
    elif broken == "corrupt_model":
        (run_dir / "model.keras").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=message):
        run_dir_lib.export_run(str(run_dir), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
@pytest.mark.parametrize("builder", [backbones.small_cnn, backbones.mlp], ids=["small_cnn", "mlp"])
def test_the_served_model_refuses_images_of_another_shape_or_dtype(builder, tmp_path):
    serving.export_serving(builder((28, 28, 1), 4), str(tmp_path), [0.5], [0.25])
    serve = tf.saved_model.load(str(tmp_path)).signatures["serve"]
    # Each of these was answered before (pooled or reshaped into 28x28x1 numbers): wrong answers.
    for shape in [(2, 32, 32, 1), (2, 28, 28, 3), (2, 28, 28), (2, 14, 56, 1), (2, 56, 14, 1)]:
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=re.escape(
                f"Shape of tensor images [{','.join(map(str, shape))}] "
                "is not compatible with expected shape [?,28,28,1]"
            ),
        ):
            serve(images=tf.zeros(shape, tf.uint8))
    for dtype in (tf.float32, tf.int32, tf.uint16):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=f"expected to be a uint8 tensor but is a {dtype.name[:-2]}",
        ):
            serve(images=tf.zeros((2, 28, 28, 1), dtype))
    assert serve(images=tf.zeros((2, 28, 28, 1), tf.uint8))["classes"].shape == (2,)


def test_export_run_to_a_directory_that_cannot_be_written_is_one_line(tmp_path):
    write_run_dir(tmp_path / "run", backbones.small_cnn((8, 8, 1), 3), [0.5], [0.25])
    with pytest.raises(ValueError) as error:
        run_dir_lib.export_run(str(tmp_path / "run"), "/proc/no_such_process/export")
    message = str(error.value)
    assert message.startswith("could not write the export next to /proc/no_such_process/export")
    assert "\n" not in message and "--export_dir you may write to" in message
