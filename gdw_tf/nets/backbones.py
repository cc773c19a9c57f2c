"""Backbones: the reference ResNet-32 for CIFAR, a small CNN and an MLP.

All models are functional `keras.Model`s that take float32 images and return logits (no
softmax). Ours take normalised images and hold no normalisation layer, so the training pipeline
and an exported serving model can each put normalisation where they need it; the
`keras.applications` models take raw pixels and apply their own `preprocess_input` inside
(`application`).

`resnet32` follows the reference code's ResNet-32 (the CIFAR ResNet of He et al. 2016, as
written for Meta-Weight-Net and GDW) layer for layer:

- 3x3 convolutions without bias, BatchNorm with PyTorch's defaults (Keras momentum 0.9 is
  PyTorch momentum 0.1; epsilon 1e-5);
- the stride-2 convolutions pad one pixel on every side, as PyTorch's `padding=1` does, instead
  of Keras' `"same"` (which pads only bottom/right for an even input). Only then does output
  pixel `i` sit over input pixel `2i`, the pixel the option-A shortcut keeps;
- the parameter-free option-A shortcut (`x[:, ::2, ::2]`, channels zero-padded by `planes // 4`
  on each side) as a registered layer, so the model saves and loads as a `.keras` file (after
  `import gdw_tf`, which registers it). Keras' own layers can express it exactly
  (`AveragePooling2D(1, strides=2)`, then `ZeroPadding2D(((0, 0), (p, p)),
  data_format="channels_first")`), but XLA compiles them to another program, whose gradients
  differ from these in the last bits (up to 1e-4 relative on a CPU under `jax.jit`): a run's
  numbers would change;
- Kaiming-normal kernels as `torch.nn.init.kaiming_normal_` draws them (fan-in, gain sqrt(2),
  untruncated: Keras' `he_normal` is truncated), and the classifier bias left at PyTorch's
  default `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.

One difference we keep: Keras updates the BatchNorm moving variance with the biased batch
variance, PyTorch with the unbiased one; with 100x32x32 values per channel this is a 1e-5
relative difference in the statistics used at test time.
"""

import math
import os
import re
import sys

import keras


def kaiming_normal():
    """The initializer of `torch.nn.init.kaiming_normal_` with its defaults."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def _batch_norm(name):
    """BatchNorm with PyTorch's defaults (momentum 0.1 in PyTorch's convention)."""
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _conv3x3(x, filters, stride, name):
    """3x3 convolution without bias, padded by one pixel on every side as in PyTorch."""
    if stride != 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        use_bias=False,
        kernel_initializer=kaiming_normal(),
        name=name,
    )(x)


@keras.saving.register_keras_serializable(package="gdw_tf")
class OptionAShortcut(keras.layers.Layer):
    """ResNet "option A" shortcut: keep every other pixel, zero-pad channels on both sides.

    Args:
        pad_channels: zero channels added before and after the input's channels.
    """

    def __init__(self, pad_channels, **kwargs):
        super().__init__(**kwargs)
        self.pad_channels = pad_channels

    def call(self, inputs):
        subsampled = inputs[:, ::2, ::2, :]
        padding = [[0, 0], [0, 0], [0, 0], [self.pad_channels, self.pad_channels]]
        return keras.ops.pad(subsampled, padding)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (
            batch,
            None if height is None else (height + 1) // 2,
            None if width is None else (width + 1) // 2,
            None if channels is None else channels + 2 * self.pad_channels,
        )

    def get_config(self):
        return {**super().get_config(), "pad_channels": self.pad_channels}


def _basic_block(x, planes, stride, name):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (option-A) shortcut, then ReLU."""
    out = _conv3x3(x, planes, stride, f"{name}_conv1")
    out = _batch_norm(f"{name}_bn1")(out)
    out = keras.layers.ReLU(name=f"{name}_relu1")(out)
    out = _conv3x3(out, planes, 1, f"{name}_conv2")
    out = _batch_norm(f"{name}_bn2")(out)
    if stride != 1 or x.shape[-1] != planes:
        x = OptionAShortcut(planes // 4, name=f"{name}_shortcut")(x)
    out = keras.layers.Add(name=f"{name}_add")([out, x])
    return keras.layers.ReLU(name=f"{name}_relu2")(out)


def resnet32(input_shape=(32, 32, 3), num_classes=10):
    """ResNet-32 for CIFAR: 3 stages x 5 basic blocks, 16/32/64 channels, option-A shortcuts.

    Args:
        input_shape: (height, width, channels) of the normalised images.
        num_classes: number of logits.

    Returns:
        A functional `keras.Model` from images to logits (464,154 trainable parameters for
        10 classes).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv3x3(inputs, 16, 1, "stem_conv")
    x = _batch_norm("stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, planes in enumerate((16, 32, 64), start=1):
        for block in range(1, 6):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, planes, stride, f"stage{stage}_block{block}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    bias_bound = 1.0 / math.sqrt(x.shape[-1])
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=kaiming_normal(),
        bias_initializer=keras.initializers.RandomUniform(-bias_bound, bias_bound),
        name="logits",
    )(x)
    return keras.Model(inputs, logits, name="resnet32")


def small_cnn(input_shape, num_classes):
    """A small CNN for 28x28 images: two conv-BN-ReLU-maxpool blocks (32, 64), then logits.

    Args:
        input_shape: (height, width, channels) of the normalised images.
        num_classes: number of logits.

    Returns:
        A functional `keras.Model` from images to logits.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for block, filters in enumerate((32, 64), start=1):
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=kaiming_normal(),
            name=f"block{block}_conv",
        )(x)
        x = _batch_norm(f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=kaiming_normal(), name="logits")(x)
    return keras.Model(inputs, logits, name="small_cnn")


def mlp(input_shape, num_classes, hidden=(256, 256)):
    """A multilayer perceptron: flatten, ReLU hidden layers, then logits.

    Args:
        input_shape: shape of one input example.
        num_classes: number of logits.
        hidden: width of each hidden layer.

    Returns:
        A functional `keras.Model` from inputs to logits.
    """
    inputs = keras.Input(shape=input_shape, name="features")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for layer, width in enumerate(hidden, start=1):
        x = keras.layers.Dense(
            width, activation="relu", kernel_initializer=kaiming_normal(), name=f"hidden{layer}"
        )(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=kaiming_normal(), name="logits")(x)
    return keras.Model(inputs, logits, name="mlp")


def build_model(name, input_shape, num_classes, weights=None):
    """Builds the backbone called `name` (one of `MODEL_NAMES` or `APPLICATION_NAMES`).

    Args:
        name: the backbone's name.
        input_shape: shape of one (normalised) input example.
        num_classes: number of logits.
        weights: None (fresh initialisation), or a local weights file: for a
            `keras.applications` model, its weights without the top (`include_top=False`),
            or "imagenet"; for the others, a file written by `backbone.save_weights`.

    Raises:
        ValueError: for an unknown name.
    """
    if name in APPLICATION_NAMES:
        return application(name, input_shape, num_classes, weights)
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}; expected one of {MODEL_NAMES}.")
    if weights == "imagenet":
        raise ValueError(
            f"--model_weights=imagenet is for keras.applications models (ResNet50, ...), not "
            f"{name}; give a .weights.h5 file of {name} or leave the flag out."
        )
    model = _BUILDERS[name](input_shape=tuple(input_shape), num_classes=num_classes)
    if weights:
        model.load_weights(weights)
    return model


def application(name, input_shape, num_classes, weights=None):
    """A `keras.applications` model without its top, average-pooled, with a new logits layer.

    It takes raw pixels (floats in [0, 255]) and applies the application's own
    `preprocess_input` inside (`ApplicationPreprocessing`, first layer), so ImageNet weights
    see the inputs they were trained on, and `model.keras`, a serving export and
    `find_label_issues` all see the same model. (The run feeds it raw pixels:
    `raw_pixel_statistics`.) Gray images are repeated to RGB there.

    Args:
        name: the application's name (`APPLICATION_NAMES`).
        input_shape: `(height, width, channels)` of the images.
        num_classes: number of logits.
        weights: None, "imagenet" (Keras' ImageNet weights from its cache, downloaded there
            if missing), or a local file of the application's weights without the top.

    Raises:
        ValueError: with one line naming the file to put where, if the ImageNet weights can be
            neither found nor downloaded.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    pixels = ApplicationPreprocessing(name, name="preprocess_input")(inputs)
    try:
        base = getattr(keras.applications, name)(
            include_top=False, weights=weights, input_tensor=pixels, pooling="avg"
        )
    except Exception as err:  # get_file raises a bare Exception when it cannot download.
        if weights != "imagenet":
            raise
        url = re.search(r"https?://\S+?\.h5", str(err))
        file = url.group(0).rsplit("/", 1)[1] if url else f"{name}'s *_notop.h5 weights"
        keras_home = _keras_home()
        raise ValueError(
            f"--model_weights=imagenet: cannot download {name}'s ImageNet weights "
            f"({str(err).splitlines()[0].rsplit(': ', 1)[-1][:120]}); put {file} "
            f"({url.group(0) if url else 'from keras.applications'}) in "
            f"{os.path.join(keras_home, 'models')}/ and run again."
        ) from None
    logits = keras.layers.Dense(num_classes, name="logits")(base.output)
    return keras.Model(inputs, logits, name=name.lower())


def check_imagenet_weights(name):
    """Builds the application `name` with its ImageNet weights once, so that weights that can
    be neither found nor downloaded are reported (`application`'s one line) before any data is
    read; afterwards they are in Keras' cache.

    Raises:
        ValueError: as `application`.
    """
    application(name, (None, None, 3), 2, weights="imagenet")


def _keras_home():
    """Keras' cache folder, where `keras.utils.get_file` keeps downloaded weights under
    `models/` ($KERAS_HOME, else ~/.keras)."""
    from keras.src.backend import config as keras_config

    default = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return getattr(keras_config, "keras_home", lambda: default)()


def preprocess_function(name):
    """`keras.applications.<module>.preprocess_input` of the application `name`."""
    module = sys.modules[getattr(keras.applications, name).__module__].__name__.rsplit(".", 1)[1]
    return getattr(keras.applications, module).preprocess_input


@keras.saving.register_keras_serializable(package="gdw_tf")
class ApplicationPreprocessing(keras.layers.Layer):
    """The `preprocess_input` of a `keras.applications` model, as a layer: raw pixels (floats
    in [0, 255], RGB) in, the application's inputs out. A gray image is repeated to RGB first.

    Args:
        application: the application's name (ResNet50, MobileNetV2, ...).
    """

    def __init__(self, application, **kwargs):
        super().__init__(**kwargs)
        self.application = application

    def call(self, inputs):
        if inputs.shape[-1] == 1:
            inputs = keras.ops.repeat(inputs, 3, axis=-1)
        return preprocess_function(self.application)(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "application": self.application}


def raw_pixel_statistics(channels):
    """The normalisation `(mean, std)` under which the input pipeline's `normalize` hands on raw
    pixels, `(x / 255 - 0) / (1 / 255)`: for the applications, which preprocess inside."""
    return [0.0] * channels, [1.0 / 255.0] * channels


_BUILDERS = {"resnet32": resnet32, "small_cnn": small_cnn, "mlp": mlp}
MODEL_NAMES = tuple(_BUILDERS)
# Every model of `keras.applications`, by its class-like name (ResNet50, MobileNetV2, ...).
APPLICATION_NAMES = tuple(sorted(name for name in dir(keras.applications) if name[:1].isupper()))
