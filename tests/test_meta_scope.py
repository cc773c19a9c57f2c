"""`GDWModel(meta_scope=...)`: the virtual step over the top of the network only.

The restricted meta-gradient is checked against the same objective written out in NumPy (a
two-layer MLP whose head is its last Dense layer) and against its central finite differences,
in float64; a scope that covers every parameter must give the numbers of "all".
"""

import keras
import numpy as np
import pytest
from tensorflow.python.framework import config as tf_config

import gdw_tf
from gdw_tf.core import meta_scope as meta_scope_lib
from gdw_tf.core import methods
from gdw_tf.core import step as step_lib
from gdw_tf.core.model import build_weight_net
from gdw_tf.nets import backbones

LR = 0.3
C = 3


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx("float32")


def _mlp(inputs=5, hidden=7):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(C),
        ]
    )


def _data(batch=6, meta_batch=4, inputs=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, inputs))
    y = rng.integers(0, C, batch).astype("int32")
    x_meta = rng.normal(size=(meta_batch, inputs))
    y_meta = (np.arange(meta_batch) % C).astype("int32")
    return x, y, x_meta, y_meta


def _values(variables):
    return [keras.ops.convert_to_tensor(np.asarray(v.numpy())) for v in variables]


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _cross_entropy(z, y):
    return -np.log(_softmax(z)[np.arange(len(y)), y])


class _RestrictedObjective:
    """The head-scope meta loss of the MLP, in NumPy: the virtual step moves the last Dense layer
    (W2, b2) only, on the hidden features h of the training batch (held fixed)."""

    def __init__(self, backbone, x, y, x_meta, y_meta):
        w1, b1, self.w2, self.b2 = (np.asarray(v.numpy()) for v in backbone.trainable_variables)
        self.h = np.tanh(x @ w1 + b1)
        self.h_meta = np.tanh(x_meta @ w1 + b1)
        self.y, self.y_meta = y, y_meta
        self.onehot = np.eye(C)[y]
        z = self.h @ self.w2 + self.b2
        self.per_example_loss = _cross_entropy(z, y)
        p = _softmax(z)
        assert p.max() < 0.99  # GDW's clip at 0.999 plays no part
        self.e = p - self.onehot

    def meta_loss(self, cotangent, lr=LR):
        """L_meta after θ'_head = θ_head − α ∇_head Σ c_ij z_ij."""
        w2 = self.w2 - lr * self.h.T @ cotangent
        b2 = self.b2 - lr * cotangent.sum(0)
        return _cross_entropy(self.h_meta @ w2 + b2, self.y_meta).mean()

    def of_weights(self, method, weights):
        """L_meta of the stage-1 weights: ω [B, C] (GDW), v [B] (MW-Net) or w [B] (L2RW, α 1)."""
        batch = len(self.y)
        if method == "gdw":
            return self.meta_loss(weights * self.e / batch)
        if method == "mwnet":
            return self.meta_loss(weights[:, None] * self.e / batch)
        return self.meta_loss(weights[:, None] * self.e / batch, lr=1.0)


def _central_difference(fn, at, eps=1e-6):
    at = np.array(at, np.float64)
    grad = np.zeros_like(at)
    for index in np.ndindex(at.shape):
        plus, minus = at.copy(), at.copy()
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


def _weight_net_numpy(phi, losses):
    kernel1, bias1, kernel2, bias2 = phi
    hidden = np.maximum(losses[:, None] @ kernel1 + bias1, 0.0)
    return (1.0 / (1.0 + np.exp(-(hidden @ kernel2 + bias2))))[:, 0]


@pytest.mark.parametrize("meta_grad", ["jvp", "nested"])
@pytest.mark.parametrize("method", ["gdw", "mwnet", "l2rw"])
def test_head_meta_gradient_is_that_of_the_restricted_objective(method, meta_grad, float64):
    keras.utils.set_random_seed(3)
    backbone = _mlp()
    weight_net = build_weight_net(hidden=4)
    x, y, x_meta, y_meta = _data()
    split = meta_scope_lib.split_backbone(backbone, "head")
    assert split.top_layers == [backbone.layers[-1].name]
    theta = _values(backbone.trainable_variables)
    non_trainable = _values(backbone.non_trainable_variables)
    phi = _values(weight_net.trainable_variables)
    record = methods.get(method)
    fwd = step_lib.forward(
        record,
        backbone,
        trainable=theta,
        non_trainable=non_trainable,
        x=x,
        y=y,
        num_classes=C,
        split=split,
    )
    meta = step_lib.meta_gradient(
        record,
        fwd,
        backbone=backbone,
        weight_net=weight_net,
        trainable=theta,
        non_trainable=non_trainable,
        weight_net_trainable=phi,
        x=x,
        x_meta=x_meta,
        y_meta=y_meta,
        learning_rate=LR,
        num_classes=C,
        meta_grad=meta_grad,
        split=split,
    )

    objective = _RestrictedObjective(backbone, x, y, x_meta, y_meta)
    np.testing.assert_allclose(np.asarray(fwd.features), objective.h, rtol=1e-12)
    weights = np.asarray(meta.weights)
    if method == "l2rw":
        np.testing.assert_array_equal(weights, 0.0)
    else:
        phi_numpy = [np.asarray(p) for p in phi]
        v = _weight_net_numpy(phi_numpy, objective.per_example_loss)
        np.testing.assert_allclose(np.asarray(meta.instance_weights), v, rtol=1e-12)
    expected = _central_difference(lambda w: objective.of_weights(method, w), weights)
    np.testing.assert_allclose(np.asarray(meta.dmeta_dweights), expected, rtol=1e-6, atol=1e-10)
    assert np.abs(expected).max() > 1e-4
    loss_lr = 1.0 if method == "l2rw" else LR
    cotangent = (
        weights[:, None] * objective.e / len(y)
        if weights.ndim == 1
        else (weights * objective.e / len(y))
    )
    assert float(meta.meta_loss) == pytest.approx(
        objective.meta_loss(cotangent, loss_lr), rel=1e-12
    )

    if method == "mwnet":
        # ∂L_meta/∂φ: finite differences of φ ↦ L_meta(v(φ)), each weight-net entry in turn.
        phi_numpy = [np.asarray(p) for p in phi]
        for i, grad in enumerate(meta.weight_net_grads):

            def of_phi(entry, i=i):
                changed = list(phi_numpy)
                changed[i] = entry
                return objective.of_weights(
                    "mwnet", _weight_net_numpy(changed, objective.per_example_loss)
                )

            np.testing.assert_allclose(
                np.asarray(grad), _central_difference(of_phi, phi_numpy[i]), rtol=1e-6, atol=1e-10
            )

    # The full scope's meta-gradient is another one: the restriction is real.
    full = step_lib.meta_gradient(
        record,
        step_lib.forward(
            record, backbone, trainable=theta, non_trainable=non_trainable, x=x, y=y, num_classes=C
        ),
        backbone=backbone,
        weight_net=weight_net,
        trainable=theta,
        non_trainable=non_trainable,
        weight_net_trainable=phi,
        x=x,
        x_meta=x_meta,
        y_meta=y_meta,
        learning_rate=LR,
        num_classes=C,
    )
    assert not np.allclose(np.asarray(full.dmeta_dweights), expected, rtol=1e-3)


def _flat_mlp_bn():
    """Flatten first, so that the scope "last:3" covers every parameter yet splits the backbone
    (after the Flatten); a BatchNormalization in the top."""
    return keras.Sequential(
        [
            keras.Input((2, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(7),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("tanh"),
            keras.layers.Dense(C),
        ]
    )


def _fit_variables(method, meta_scope, backbone_fn, steps=4, meta_interval=1, **compile_kwargs):
    rng = np.random.default_rng(1)
    input_shape = backbone_fn().inputs[0].shape[1:]
    dtype = keras.config.floatx()
    x = rng.normal(size=(20 * steps, *input_shape)).astype(dtype)
    y = rng.integers(0, C, 20 * steps)
    x_meta = rng.normal(size=(30, *input_shape)).astype(dtype)
    y_meta = np.arange(30) % C
    keras.utils.set_random_seed(2)
    model = gdw_tf.GDWModel(
        backbone_fn(),
        C,
        method=method,
        meta_data=(x_meta, y_meta),
        meta_batch_size=10,
        meta_scope=meta_scope,
        meta_interval=meta_interval,
        meta_grad=compile_kwargs.pop("meta_grad", "jvp"),
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), **compile_kwargs)
    model.fit(x, y, batch_size=20, epochs=1, shuffle=False, verbose=0)
    return model, [
        np.asarray(v.numpy()) for v in model.backbone.variables + model.weight_net.variables
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, meta_interval", [("gdw", 1), ("mwnet", 1), ("l2rw", 1), ("gdw", 2)]
)
def test_a_scope_covering_every_parameter_gives_the_numbers_of_all(method, meta_interval, float64):
    split, covering = _fit_variables(method, "last:3", _flat_mlp_bn, meta_interval=meta_interval)
    assert split._meta_split is not None  # split after the Flatten: the restricted path ran
    _, full = _fit_variables(method, "all", _flat_mlp_bn, meta_interval=meta_interval)
    _, head = _fit_variables(method, "head", _flat_mlp_bn, meta_interval=meta_interval)
    for a, b in zip(full, covering):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    assert not all(np.allclose(a, b, rtol=1e-6) for a, b in zip(full, head))


def _conv_bn():
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(C),
        ]
    )


@pytest.fixture
def xla_allowed():
    """Keras turns XLA off while TF's op determinism (set in conftest) is on."""
    if keras.backend.backend() == "tensorflow":
        tf_config.disable_op_determinism()
    yield
    if keras.backend.backend() == "tensorflow":
        tf_config.enable_op_determinism()


@pytest.mark.slow
@pytest.mark.parametrize("method, meta_interval", [("gdw", 1), ("mwnet", 2), ("l2rw", 1)])
def test_head_scope_is_the_same_eagerly_in_graph_and_under_xla(method, meta_interval, xla_allowed):
    def fit(**kwargs):
        return _fit_variables(
            method, "head", _conv_bn, steps=3, meta_interval=meta_interval, **kwargs
        )[1]

    graph = fit(jit_compile=False)
    for other in (
        fit(run_eagerly=True),
        fit(jit_compile=True),
        fit(jit_compile=False, meta_grad="nested"),
    ):
        for a, b in zip(graph, other):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    # Not the numbers of the whole-network virtual step.
    full = _fit_variables(
        method, "all", _conv_bn, steps=3, meta_interval=meta_interval, jit_compile=False
    )[1]
    assert not all(np.allclose(a, b, rtol=1e-4) for a, b in zip(graph, full))


def test_meta_interval_with_a_head_scope_updates_the_weight_net_on_meta_steps_only():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6, 6, 2)).astype("float32"), rng.integers(0, C, 60)
    x_meta, y_meta = rng.normal(size=(30, 6, 6, 2)).astype("float32"), np.arange(30) % C
    model = gdw_tf.GDWModel(
        _conv_bn(),
        C,
        meta_data=(x_meta, y_meta),
        meta_batch_size=10,
        meta_scope="head",
        meta_interval=2,
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    phis = [np.asarray(model.weight_net.trainable_variables[0].numpy())]
    for i in range(3):
        model.fit(x[20 * i : 20 * (i + 1)], y[20 * i : 20 * (i + 1)], batch_size=20, verbose=0)
        phis.append(np.asarray(model.weight_net.trainable_variables[0].numpy()))
    np.testing.assert_array_equal(phis[1], phis[0])  # step 1: no meta step
    assert not np.array_equal(phis[2], phis[1])  # step 2: meta step
    np.testing.assert_array_equal(phis[3], phis[2])  # step 3: none
    assert int(model.meta_cursor.numpy()) == 10  # one meta batch drawn


def test_scopes_name_units_of_the_bundled_backbones():
    resnet = backbones.resnet32(num_classes=10)
    assert meta_scope_lib.split_backbone(resnet, "head").top_layers == ["logits"]
    assert meta_scope_lib.split_backbone(resnet, "last:2").top_layers == [
        "stage3_block5_conv1",
        "stage3_block5_bn1",
        "stage3_block5_conv2",
        "stage3_block5_bn2",
        "logits",
    ]
    cnn = backbones.small_cnn((28, 28, 1), 10)
    assert meta_scope_lib.split_backbone(cnn, "last:3").top_layers == [
        "block2_conv",
        "block2_bn",
        "logits",
    ]
    assert meta_scope_lib.split_backbone(cnn, "all") is None


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(C)

    def call(self, inputs):
        return self.dense(inputs)


@pytest.mark.parametrize(
    "backbone_fn, meta_scope, message",
    [
        (_mlp, "last", "meta_scope must be all, head or last:k"),
        (_mlp, "last:0", "meta_scope must be all, head or last:k"),
        (_mlp, "last:3", "has only 2 units"),
        (None, "head", "needs a functional backbone"),
    ],
    ids=["spelling", "zero", "too_many_units", "subclassed"],
)
def test_scopes_that_cannot_be_split_are_refused_at_construction(backbone_fn, meta_scope, message):
    if backbone_fn is None:
        backbone = _Subclassed()
        backbone(np.zeros((1, 5), "float32"))
    else:
        backbone = backbone_fn()
    x_meta, y_meta = np.zeros((6, 5), "float32"), np.arange(6) % C
    with pytest.raises(ValueError, match=message) as error:
        gdw_tf.GDWModel(
            backbone, C, meta_data=(x_meta, y_meta), meta_batch_size=3, meta_scope=meta_scope
        )
    assert "\n" not in str(error.value)


def test_the_scope_is_saved_with_the_model(tmp_path):
    x_meta, y_meta = np.zeros((6, 5), "float32"), np.arange(6) % C
    models_by_scope = {}
    for scope in ("head", "all"):
        model = gdw_tf.GDWModel(
            _mlp(), C, meta_data=(x_meta, y_meta), meta_batch_size=3, meta_scope=scope
        )
        model.compile(keras.optimizers.SGD(0.1))
        models_by_scope[scope] = model
    path = str(tmp_path / "model.keras")
    models_by_scope["head"].save(path)
    loaded = keras.models.load_model(path)
    assert loaded.meta_scope == "head" and loaded._meta_split is not None
    # The split holds no variables of its own: the model tracks the backbone's and weight net's.
    assert len(models_by_scope["head"].variables) == len(models_by_scope["all"].variables)


@pytest.mark.slow
def test_the_study_script_runs_each_weighting_method_per_scope():
    """scripts/fashion_mnist_study.py --meta_scopes: cells, run directories and commands."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('study', 'scripts/fashion_mnist_study.py')\n"
        "study = importlib.util.module_from_spec(spec); spec.loader.exec_module(study)\n"
        "cells = list(study.cells(['flip_40'], ['ce', 'gdw'], ['0'], ['all', 'last:2']))\n"
        "command = study.train_command('flip_40', 'gdw@last:2', 0, 5, 'out')\n"
        "print(json.dumps([cells, study.run_dir('r', 'flip_40', 'gdw@last:2', 0), command[2:],\n"
        "                  study.variant_name('gdw@last:2')]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cells, directory, command, name = __import__("json").loads(result.stdout.splitlines()[-1])
    assert cells == [
        ["flip_40", "ce", "0"],
        ["flip_40", "gdw", "0"],
        ["flip_40", "gdw@last:2", "0"],
    ]
    assert directory == os.path.join("r", "flip_40", "gdw_last2", "seed0")
    assert "--method=gdw" in command and "--meta_scope=last:2" in command
    assert name == "GDW (last:2)"
