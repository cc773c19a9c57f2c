"""gdw_tf's GDW step against the authors' PyTorch step, on the same machine and batch shape.

The authors' code is not a dependency, and neither is PyTorch. Get both first:

    git clone https://github.com/GGchen1997/GDW-NIPS2021 /tmp/GDW-NIPS2021
    git -C /tmp/GDW-NIPS2021 checkout 9aa54d3bd68c930887486b3736f3d29d880d66b9
    pip install torch torchvision       # CPU builds do; torchvision: their utils.py imports it
    python scripts/pytorch_comparison.py --reference_dir=/tmp/GDW-NIPS2021 --json

(That commit is the repository's newest, of October 2022; its training code, `main.py`,
`utils.py` and `resnet.py`, is unchanged since its first commit, 304af1b.)

The authors' step is one iteration of `train()` in their `main.py`, run by their own function
on a loader of one random batch: their ResNet-32 and weight net (`VNet(1, 100, 1)`), with the
optimizers their `main()` builds (SGD, lr 0.1, momentum 0.9, weight decay 5e-4; Adam 1e-3 for
the weight net), `--mode=gdw` (or `mw-net` for MW-Net), and a meta batch as large as the
training batch. It runs in a child process of this script (their `main.py` parses the command
line and picks its device when imported), on their device choice (CUDA if PyTorch sees a GPU),
with `torch.set_num_threads(--threads)`; each iteration ends with `loss.item()`, which waits for
the step. gdw_tf's step is `gdw_tf.bench`'s: the compiled train step `fit` runs, on the Keras
backend in use, ResNet-32 on random 32x32x3 batches of the same size. Each side reports the
median over `--steps` steps after `--warmup` steps; the table gives ms per step, steps per
second, and gdw_tf's speed-up (the authors' time over gdw_tf's). The two sides run one after
the other, the authors' first, so a shared machine's load may differ between them: run it twice.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

REFERENCE_URL = "https://github.com/GGchen1997/GDW-NIPS2021"
REFERENCE_COMMIT = "9aa54d3bd68c930887486b3736f3d29d880d66b9"
# gdw_tf's method name → the `--mode` of the authors' main.py.
REFERENCE_MODES = {"gdw": "gdw", "mwnet": "mw-net"}
NUM_CLASSES = 10  # their main.py's default, CIFAR-10

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "reference_dir",
    None,
    f"A checkout of the authors' code ({REFERENCE_URL}, commit {REFERENCE_COMMIT[:7]}).",
)
flags.DEFINE_list("methods", ["gdw"], f"Methods to compare: some of {', '.join(REFERENCE_MODES)}.")
flags.register_validator(
    "methods",
    lambda names: bool(names) and set(names) <= set(REFERENCE_MODES),
    message=f"--methods: give some of {','.join(REFERENCE_MODES)} (the authors' code has no more).",
)
# Not --batch_size: `python -m gdw_tf.train`'s flag of that name may share the process (tests).
flags.DEFINE_integer("batch", 100, "Training and meta batch (theirs: 100).", lower_bound=1)
flags.DEFINE_integer("steps", 8, "Timed steps per method and side.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps first (gdw_tf: tracing).", lower_bound=1)
flags.DEFINE_integer(
    "threads",
    len(os.sched_getaffinity(0)),
    "PyTorch's threads (torch.set_num_threads); TensorFlow uses every core it may run on, the "
    "default here.",
    lower_bound=1,
)
flags.DEFINE_bool("json", False, "End with one JSON line of the figures.")
flags.DEFINE_bool(
    "reference_child",
    False,
    "Internal: time the authors' step in this process (importable from --reference_dir) and "
    "print one JSON line.",
)


def reference_problem(reference_dir):
    """Why the authors' step cannot be timed from `reference_dir` (one line), or None."""
    get = f"git clone {REFERENCE_URL} {reference_dir or 'DIR'}; git checkout {REFERENCE_COMMIT}"
    if not reference_dir or not os.path.isfile(os.path.join(reference_dir, "main.py")):
        return f"--reference_dir={reference_dir or ''} holds no main.py of the authors: {get}."
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (optional for gdw_tf): pip install torch torchvision."
    return None


def time_reference(reference_dir, methods, *, batch_size, steps, warmup, threads):
    """The authors' step timed in a child process: `{"ms_per_step": {method: ms}, "torch": ...,
    "device": ..., "threads": ...}`.

    Raises:
      RuntimeError: with the child's last lines, if it fails.
    """
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--reference_child",
        f"--methods={','.join(methods)}",
        f"--batch={batch_size}",
        f"--steps={steps}",
        f"--warmup={warmup}",
        f"--threads={threads}",
    ]
    path = os.pathsep.join(filter(None, [reference_dir, os.environ.get("PYTHONPATH")]))
    child = subprocess.run(
        command,
        cwd=reference_dir,
        env=dict(os.environ, PYTHONPATH=path),
        capture_output=True,
        text=True,
    )
    if child.returncode:
        raise RuntimeError(f"the authors' step failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _reference_child(methods, *, batch_size, steps, warmup, threads):
    """In the child: imports the authors' `main.py` and times its `train()` on one batch."""
    import contextlib
    import io
    from unittest import mock

    import torch

    torch.set_num_threads(threads)
    # Their main.py parses the command line when imported: it sees only the batch size.
    with mock.patch.object(sys, "argv", ["main.py", f"--batch_size={batch_size}"]):
        import main as reference
    args, device = reference.args, reference.device
    generator = torch.Generator().manual_seed(0)
    x, x_meta = (torch.randn(batch_size, 3, 32, 32, generator=generator) for _ in "xm")
    y, y_meta = (torch.randint(NUM_CLASSES, (batch_size,), generator=generator) for _ in "ym")
    train = OneBatch((x, y, y, torch.arange(batch_size)))  # inputs, targets, true targets, ids
    meta = OneBatch((x_meta, y_meta))
    ms_per_step = {}
    for method in methods:
        args.mode = REFERENCE_MODES[method]  # what `--mode` sets; train() reads it per step
        # As their main() builds them.
        model = reference.build_model(args)
        vnet = reference.VNet(1, args.hidden_dim, 1).to(device)
        optimizer = torch.optim.SGD(
            model.params(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
        optimizer_vnet = torch.optim.Adam(vnet.params(), 1e-3, weight_decay=1e-4)
        times = []
        for step in range(warmup + steps):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch lines
                reference.train(train, meta, model, vnet, optimizer, optimizer_vnet, 0)
            if step >= warmup:
                times.append(1000 * (time.perf_counter() - start))
        ms_per_step[method] = statistics.median(times)
    return {
        "ms_per_step": ms_per_step,
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


class OneBatch:
    """A loader of one batch, as their `train()` reads a loader (it iterates it, and prints
    `len(loader.dataset)`)."""

    def __init__(self, tensors):
        self.tensors, self.dataset = tensors, tensors[0]

    def __iter__(self):
        return iter([self.tensors])


def time_gdw_tf(methods, *, batch_size, steps, warmup):
    """gdw_tf's steps, timed by `gdw_tf.bench` on ResNet-32: its result dict."""
    from gdw_tf import bench

    return bench.run(
        bench.Bench(
            methods=tuple(methods),
            steps=steps,
            warmup=warmup,
            num_classes=NUM_CLASSES,
            model="resnet32",
            batch_size=batch_size,
        )
    )


def compare(reference, gdw_tf):
    """The figures of both sides: `{method: {...}}` with ms per step, steps per second and
    gdw_tf's speed-up (the authors' time over gdw_tf's)."""
    rows = {}
    for method, theirs in reference["ms_per_step"].items():
        ours = gdw_tf["ms_per_step"][method]
        rows[method] = {
            "reference_ms_per_step": theirs,
            "reference_steps_per_second": 1000 / theirs,
            "gdw_tf_ms_per_step": ours,
            "gdw_tf_steps_per_second": 1000 / ours,
            "speed_up": theirs / ours,
        }
    return rows


def format_table(rows, reference, gdw_tf, batch_size, steps, warmup):
    """The comparison as a text table under a line saying what ran where."""
    lines = [
        f"ResNet-32, batch {batch_size}, median of {steps} steps after {warmup}: the authors' "
        f"code on PyTorch {reference['torch']} ({reference['device']}, "
        f"{reference['threads']} threads); gdw_tf on Keras {gdw_tf['keras']} / "
        f"{gdw_tf['backend']} ({gdw_tf['device']})",
        f"{'method':<8}{'authors ms/step':>17}{'steps/s':>9}{'gdw_tf ms/step':>16}"
        f"{'steps/s':>9}{'speed-up':>10}",
    ]
    for method, row in rows.items():
        lines.append(
            f"{method:<8}{row['reference_ms_per_step']:>17.1f}"
            f"{row['reference_steps_per_second']:>9.2f}{row['gdw_tf_ms_per_step']:>16.1f}"
            f"{row['gdw_tf_steps_per_second']:>9.2f}{row['speed_up']:>9.2f}×"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    sizes = {"batch_size": FLAGS.batch, "steps": FLAGS.steps, "warmup": FLAGS.warmup}
    if FLAGS.reference_child:
        print(json.dumps(_reference_child(FLAGS.methods, threads=FLAGS.threads, **sizes)))
        return
    problem = reference_problem(FLAGS.reference_dir)
    if problem:
        raise app.UsageError(problem)
    reference = time_reference(
        os.path.abspath(FLAGS.reference_dir), FLAGS.methods, threads=FLAGS.threads, **sizes
    )
    gdw_tf = time_gdw_tf(FLAGS.methods, **sizes)
    rows = compare(reference, gdw_tf)
    print(format_table(rows, reference, gdw_tf, **sizes))
    if FLAGS.json:
        print(json.dumps({"reference": reference, "gdw_tf": gdw_tf, "comparison": rows}))


if __name__ == "__main__":
    app.run(main)
