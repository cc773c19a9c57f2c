"""Tests of the backbones: ResNet-32's exact architecture, serialisation, the small models."""

import os

import keras
import numpy as np
import pytest

from gdw_tf.nets import backbones


def resnet32_parameter_counts(num_classes):
    """(trainable, non-trainable) parameters of ResNet-32, counted from its description."""
    convs = [(3, 16)]  # (in, out) channels of every 3x3 convolution, stem first
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(5):
            convs += [(in_planes, planes), (planes, planes)]
            in_planes = planes
    conv_weights = sum(3 * 3 * c_in * c_out for c_in, c_out in convs)
    bn_channels = sum(c_out for _, c_out in convs)  # one BatchNorm after every convolution
    dense = 64 * num_classes + num_classes
    return conv_weights + 2 * bn_channels + dense, 2 * bn_channels


def test_resnet32_has_the_canonical_parameter_count():
    model = backbones.resnet32()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert (trainable, non_trainable) == resnet32_parameter_counts(10)
    assert trainable == 464_154
    assert model.count_params() == 464_154 + 2_272
    assert len([layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]) == 31
    assert backbones.resnet32(num_classes=100).count_params() == 464_154 + 2_272 + 64 * 90 + 90


def test_resnet32_layers_use_pytorch_defaults():
    model = backbones.resnet32()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == 0.9 and layer.epsilon == 1e-5
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias
    # Kaiming normal, fan-in, untruncated: std sqrt(2 / fan_in), tails beyond 2 std.
    kernel = model.get_layer("stage3_block5_conv2").kernel.numpy()
    expected_std = np.sqrt(2 / (3 * 3 * 64))
    assert kernel.std() == pytest.approx(expected_std, rel=0.03)
    assert np.abs(kernel).max() > 3 * expected_std
    bias = model.get_layer("logits").bias.numpy()
    assert 0 < np.abs(bias).max() <= 1 / 8


def test_stride2_convolution_is_centred_on_the_shortcut_pixels():
    # With a centre-tap identity kernel, PyTorch's symmetric padding gives exactly
    # x[:, ::2, ::2]: the pixels the option-A shortcut keeps.
    model = backbones.resnet32()
    pad = model.get_layer("stage2_block1_conv1_pad")
    conv = model.get_layer("stage2_block1_conv1")
    kernel = np.zeros(conv.kernel.shape, np.float32)
    kernel[1, 1, np.arange(16), np.arange(16)] = 1.0
    conv.kernel.assign(kernel)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 16)).astype(np.float32)
    out = conv(pad(x)).numpy()
    assert out.shape == (2, 16, 16, 32)
    np.testing.assert_allclose(out[..., :16], x[:, ::2, ::2, :], atol=1e-6)
    np.testing.assert_array_equal(out[..., 16:], 0.0)


def test_option_a_shortcut():
    x = np.random.default_rng(0).normal(size=(2, 7, 8, 16)).astype(np.float32)
    layer = backbones.OptionAShortcut(8)
    expected = np.pad(x[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (8, 8)])
    np.testing.assert_array_equal(layer(x).numpy(), expected)
    assert layer.compute_output_shape((None, 7, 8, 16)) == (None, 4, 4, 32)
    assert not layer.weights


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' own
def test_resnet32_keras_file_round_trip(tmp_path):
    model = backbones.resnet32(num_classes=10)
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    path = os.path.join(tmp_path, "resnet32.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.count_params() == model.count_params()
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)


def test_small_cnn_and_mlp():
    cnn = backbones.build_model("small_cnn", (28, 28, 1), 10)
    # conv 3x3x1x32, BN 4x32, conv 3x3x32x64, BN 4x64, dense (7*7*64)x10 + 10
    assert cnn.count_params() == 288 + 128 + 18432 + 256 + 31370
    x = np.zeros((4, 28, 28, 1), np.float32)
    assert cnn(x).shape == (4, 10)
    net = backbones.build_model("mlp", (5,), 3)
    assert net.count_params() == (5 * 256 + 256) + (256 * 256 + 256) + (256 * 3 + 3)
    assert net(np.ones((2, 5), np.float32)).shape == (2, 3)
    assert backbones.mlp((4,), 2, hidden=(8, 6)).count_params() == (4 * 8 + 8) + (8 * 6 + 6) + 14


def test_build_model_dispatch():
    assert backbones.build_model("resnet32", (32, 32, 3), 10).name == "resnet32"
    assert set(backbones.MODEL_NAMES) == {"resnet32", "small_cnn", "mlp"}
    with pytest.raises(ValueError, match="Unknown model 'resnet18'"):
        backbones.build_model("resnet18", (32, 32, 3), 10)


# --------------------------------------------------------------------------------------------
# keras.applications: raw pixels in, their own preprocess_input inside


def _legacy_notop_file(path, application):
    """Writes `application`'s weights as Keras writes its ImageNet `*_notop.h5` files."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, application)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, module", [("ResNet50", "resnet50"), ("MobileNetV2", "mobilenet_v2")]
)
def test_an_application_on_raw_pixels_is_the_application_on_its_preprocess_input(
    tmp_path, name, module
):
    # ResNet50: "caffe" preprocessing (RGB to BGR, ImageNet means); MobileNetV2: "tf" ([-1, 1]).
    application = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    rng = np.random.default_rng(0)
    application.set_weights(
        [w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in application.get_weights()]
    )
    weights = str(tmp_path / f"{module}_notop.h5")
    _legacy_notop_file(weights, application)
    pixels = rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    preprocess = getattr(keras.applications, module).preprocess_input
    expected = application.predict(preprocess(pixels.copy()), verbose=0)

    backbone = backbones.build_model(name, (32, 32, 3), 4, weights=weights)
    features = keras.Model(backbone.input, backbone.get_layer("logits").input)
    np.testing.assert_allclose(features.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-4)
    # model.keras keeps the preprocessing.
    backbone.save(str(tmp_path / "model.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(
        reloaded.predict(pixels, verbose=0), backbone.predict(pixels, verbose=0), rtol=1e-6
    )


def test_gray_images_are_repeated_to_rgb_for_an_application():
    backbone = backbones.build_model("MobileNetV2", (32, 32, 1), 3)
    gray = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(
        backbone.get_layer("preprocess_input")(gray).numpy(),
        np.repeat(gray, 3, axis=-1) / 127.5 - 1.0,
        rtol=1e-6,
        atol=1e-6,
    )


def test_imagenet_weights_that_cannot_be_downloaded_name_the_file_and_the_folder(monkeypatch):
    from keras.src.utils import file_utils

    real_get_file = file_utils.get_file
    asked = []

    def offline(fname=None, origin=None, **kwargs):
        asked.append(fname)  # A port nothing listens on: a real, immediate download failure.
        return real_get_file(fname, "http://127.0.0.1:9/" + origin.split("/")[-1], **kwargs)

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ValueError) as error:
        backbones.build_model("ResNet50", (32, 32, 3), 4, weights="imagenet")
    message = str(error.value)
    assert asked == ["resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"]
    assert "\n" not in message and f"put {asked[0]} " in message
    assert os.path.join(backbones._keras_home(), "models") + "/" in message
    with pytest.raises(ValueError, match="--model_weights=imagenet is for keras.applications"):
        backbones.build_model("small_cnn", (28, 28, 1), 4, weights="imagenet")
