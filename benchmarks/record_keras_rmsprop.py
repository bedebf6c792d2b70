"""Record the tutorial's own RMSprop (and Keras 3's) on fixed gradients, as the oracle for mnistlab's KerasRMSprop.

Run with a Python that has TensorFlow and tf-keras (not mnistlab dependencies), e.g. the git-ignored venv:

    python3.11 -m venv .venv-keras && .venv-keras/bin/pip install tensorflow-cpu tf-keras numpy
    .venv-keras/bin/python benchmarks/record_keras_rmsprop.py [--out tests/fixtures/keras_legacy_rmsprop.json]

The tutorial ran tf.keras 2.x (TensorFlow 2.4-2.10), whose RMSprop is the ``optimizer_v2`` one, still shipped as
``tf_keras.optimizers.legacy.RMSprop``: ``v = rho v + (1 - rho) g^2;  w -= lr g / (sqrt(v) + eps)``. Keras 3 (and
TensorFlow >= 2.11) divides by ``sqrt(v + eps)`` instead. The two agree where ``g^2 >> eps`` and differ by orders
of magnitude where ``|g| <~ 1e-4``, so the gradients below are chosen in both regimes (and switching between
them), and both trajectories are stored: ``tests/test_optim.py`` replays the gradients through mnistlab's
optimizer and must match the first and not the second. Nothing here imports torch or mnistlab.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "keras_legacy_rmsprop.json"
STEPS = 50
SEED = 20240609
SETTINGS = {"learning_rate": 1e-3, "rho": 0.9, "epsilon": 1e-7, "momentum": 0.0, "centered": False}


def make_problem(*, steps: int = STEPS, seed: int = SEED) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Initial values (name -> (8,)) and gradients (name -> (steps, 8)), float32, from a fixed seed.

    ``tiny``: |g| log-uniform in [1e-6, 1e-4], where sqrt(v) + eps and sqrt(v + eps) differ 3x to 300x.
    ``large``: |g| log-uniform in [10, 1e3] (~1e2), where the two rules agree to ~1e-12 relative.
    ``mixed``: each entry tiny or large at random each step, and exactly zero 10% of the time (v still decays).
    Signs are random everywhere, so the trajectories wander instead of drifting one way.
    """
    rng = np.random.default_rng(seed)

    def magnitudes(low: float, high: float) -> np.ndarray:
        return 10.0 ** rng.uniform(np.log10(low), np.log10(high), size=(steps, 8))

    def signs() -> np.ndarray:
        return rng.choice([-1.0, 1.0], size=(steps, 8))

    tiny = signs() * magnitudes(1e-6, 1e-4)
    large = signs() * magnitudes(10.0, 1e3)
    regime = rng.uniform(size=(steps, 8))
    mixed = np.where(regime < 0.45, signs() * magnitudes(1e-6, 1e-4), signs() * magnitudes(10.0, 1e3))
    mixed[regime > 0.9] = 0.0
    grads = {"tiny": tiny, "large": large, "mixed": mixed}
    initial = {name: rng.normal(scale=0.1, size=8) for name in grads}
    return ({k: v.astype(np.float32) for k, v in initial.items()},
            {k: v.astype(np.float32) for k, v in grads.items()})


def run_trajectory(make_optimizer: Callable[[], object], variable: Callable[[np.ndarray, str], object],
                   initial: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Step one optimizer over all variables together; name -> (steps + 1, 8) values, row 0 the initial ones."""
    import tensorflow as tf

    names = list(initial)
    variables = [variable(initial[name], name) for name in names]
    optimizer = make_optimizer()
    rows: dict[str, list[np.ndarray]] = {name: [initial[name].copy()] for name in names}
    for step in range(len(grads[names[0]])):
        optimizer.apply_gradients([(tf.constant(grads[name][step]), var)  # type: ignore[attr-defined]
                                   for name, var in zip(names, variables, strict=True)])
        for name, var in zip(names, variables, strict=True):
            rows[name].append(np.asarray(var.numpy(), dtype=np.float32))  # type: ignore[attr-defined]
    return {name: np.stack(values) for name, values in rows.items()}


def legacy_trajectory(initial: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tutorial's rule: ``tf_keras.optimizers.legacy.RMSprop`` (optimizer_v2) with Keras' defaults."""
    import tensorflow as tf
    import tf_keras

    return run_trajectory(lambda: tf_keras.optimizers.legacy.RMSprop(**SETTINGS),
                          lambda value, name: tf.Variable(value, name=name), initial, grads)


def keras3_trajectory(initial: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keras 3's default RMSprop (``tf.keras.optimizers.RMSprop`` in TensorFlow >= 2.16), same settings."""
    import keras

    return run_trajectory(lambda: keras.optimizers.RMSprop(**SETTINGS),
                          lambda value, name: keras.Variable(value, name=name), initial, grads)


def as_lists(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    """float32 values as JSON numbers: float(np.float32) is exact, and JSON round-trips a float64 exactly."""
    return {name: array.astype(np.float64).tolist() for name, array in arrays.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tf_keras

    # One thread: the machine is shared, and 24 tiny element-wise ops gain nothing from more.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    initial, grads = make_problem()
    legacy = legacy_trajectory(initial, grads)
    keras3 = keras3_trajectory(initial, grads)
    record = {
        "what": "RMSprop trajectories on fixed float32 gradients; row 0 of each trajectory is the initial value, "
                "row t the value after step t. 'legacy' is the tutorial's rule (epsilon outside the sqrt), "
                "'keras3' is Keras 3's (epsilon inside). Made by benchmarks/record_keras_rmsprop.py.",
        "recorded": datetime.date.today().isoformat(),
        "versions": {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "settings": SETTINGS,
        "steps": STEPS,
        "seed": SEED,
        "optimizers": {
            "legacy": {"class": "tf_keras.optimizers.legacy.RMSprop",
                       "rule": "v = rho v + (1 - rho) g^2; w -= lr g / (sqrt(v) + eps)"},
            "keras3": {"class": f"keras.optimizers.RMSprop (keras {keras.__version__}, tensorflow backend)",
                       "rule": "v = rho v + (1 - rho) g^2; w -= lr g / sqrt(v + eps)"},
        },
        "variables": {name: {"regime": regime} for name, regime in
                      (("tiny", "|g| in [1e-6, 1e-4]: the rules differ"), ("large", "|g| in [10, 1e3]: they agree"),
                       ("mixed", "tiny, large or zero at random each step"))},
        "initial": as_lists(initial),
        "gradients": as_lists(grads),
        "trajectories": {"legacy": as_lists(legacy), "keras3": as_lists(keras3)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(args.out.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(args.out)
    for name in initial:
        gap = float(np.max(np.abs(legacy[name] - keras3[name])))
        print(f"{name}: max |legacy - keras3| over {STEPS} steps = {gap:.3g}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
