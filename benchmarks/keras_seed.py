"""The seed tutorial's four experiments in Keras, with its exact settings, for side-by-side timing.

Run with a Python that has TensorFlow and tf-keras installed (not mnistlab dependencies; scikit-learn too for
``sgd``), e.g. the one ``make keras-venv`` makes:

    .venv-keras/bin/python benchmarks/keras_seed.py [--only softmax,mlp,cnn,sgd] [--epochs 30]
                                                    [--optimizer legacy|keras3|both] [--seed N]

``--optimizer`` picks which RMSprop ``compile(optimizer="rmsprop")`` means:

- ``legacy`` (default): the rule the tutorial ran. Its output dates it to tf.keras 2.x (TensorFlow 2.4-2.10), whose
  RMSprop is ``optimizer_v2``: ``w -= lr g / (sqrt(v) + eps)``. It is still shipped as
  ``tf_keras.optimizers.legacy.RMSprop``, so this runs the code on ``tf_keras`` (Keras 2) with that optimizer.
- ``keras3``: Keras 3's default RMSprop (``import keras``; also TensorFlow >= 2.11's), ``w -= lr g / sqrt(v + eps)``.
- ``both``: legacy first (its figures stay at the top level, where the benchmarks read them), then Keras 3's
  under ``"keras3"``.

``--seed N`` seeds Python's, numpy's and TensorFlow's generators (``keras.utils.set_random_seed``) before each
experiment, so each experiment's figure depends only on N (``--only cnn --seed 3`` gives what the full run gives)
and the SGD baseline's unseeded ``train_test_split`` and ``SGDClassifier`` draw from the seeded numpy generator,
exactly as the tutorial's code would in a seeded session. Without it nothing is seeded, as in the tutorial.
``benchmarks/keras_seeds.py`` runs this over many seeds.

Data comes from mnistlab's bundled files (no download). Prints one JSON object: per experiment the training
seconds (``model.fit`` only) and the test accuracy, and which Keras, TensorFlow and optimizer rule made them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MNIST_DIR = Path(__file__).resolve().parents[1] / "src" / "mnistlab" / "datasets" / "mnist"


def read(name: str, offset: int) -> np.ndarray:
    with gzip.open(MNIST_DIR / f"{name}.gz", "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


RULES = {
    "legacy": {"keras_package": "tf_keras", "class": "tf_keras.optimizers.legacy.RMSprop",
               "rule": "w -= lr g / (sqrt(v) + eps) (optimizer_v2, the tutorial's)"},
    "keras3": {"keras_package": "keras", "class": "keras.optimizers.RMSprop",
               "rule": "w -= lr g / sqrt(v + eps) (Keras 3 default)"},
}


def import_keras(optimizer: str) -> tuple[Any, Callable[[], Any]]:
    """(the Keras module, a factory of a fresh RMSprop with Keras' defaults) for ``--optimizer``."""
    if optimizer == "legacy":
        try:
            import tf_keras
        except ImportError as error:
            raise SystemExit(f"--optimizer legacy needs tf_keras in this Python ({error}): pip install "
                             "tf-keras matching tensorflow's minor version, or pass --optimizer keras3") from None
        return tf_keras, tf_keras.optimizers.legacy.RMSprop
    import keras

    if not keras.__version__.startswith("3."):
        raise SystemExit(f"--optimizer keras3 needs Keras 3, this Python has keras {keras.__version__}")
    return keras, keras.optimizers.RMSprop


def run_experiments(optimizer: str, names: list[str], epochs: int, seed: int | None = None) -> dict[str, Any]:
    """Train and evaluate each of ``names`` with the Keras and RMSprop ``optimizer`` selects (seeded before each
    experiment when ``seed`` is given)."""
    keras, make_rmsprop = import_keras(optimizer)
    import tensorflow as tf

    layers = keras.layers

    class EpochTimer(keras.callbacks.Callback):
        """Wall seconds of each epoch (Keras' own per-epoch figure, like mnistlab's history)."""

        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    x = read("train-images-idx3-ubyte", 16).reshape(-1, 28, 28)
    y = read("train-labels-idx1-ubyte", 8)
    xt = read("t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28)
    yt = read("t10k-labels-idx1-ubyte", 8)
    onehot, onehot_t = keras.utils.to_categorical(y), keras.utils.to_categorical(yt)
    results: dict[str, Any] = {"keras": keras.__version__, "backend": keras.backend.backend(),
                               "tensorflow": tf.__version__, "optimizer": optimizer, **RULES[optimizer],
                               "epochs": epochs, "seed": seed}

    def network(name: str) -> tuple[Any, np.ndarray, np.ndarray, int]:
        if name == "cnn":
            model = keras.Sequential([
                keras.Input((28, 28, 1)),
                layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
                layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
                layers.Conv2D(64, (3, 3), activation="relu"), layers.Flatten(),
                layers.Dense(10, activation="softmax"),
            ])
            shape = (-1, 28, 28, 1)
        elif name == "mlp":
            model = keras.Sequential([keras.Input((784,)), layers.Dense(100, activation="relu"),
                                      layers.Dense(100, activation="relu"), layers.Flatten(),
                                      layers.Dense(10, activation="softmax")])
            shape = (-1, 784)
        else:
            model = keras.Sequential([keras.Input((784,)), layers.Dense(10, activation="softmax")])
            shape = (-1, 784)
        batch = 128 if name == "softmax" else 200
        return model, (x.reshape(shape).astype("float32") / 255), (xt.reshape(shape).astype("float32") / 255), batch

    for name in names:
        if seed is not None:
            # Python, numpy and TensorFlow at once; reseeding per experiment keeps each figure a function of the
            # seed alone, not of which experiments ran before it in this process.
            keras.utils.set_random_seed(seed)
        if name == "sgd":
            from sklearn.linear_model import SGDClassifier
            from sklearn.model_selection import train_test_split

            features = x.reshape(-1, 784).astype("float32") / 255
            x_fit, x_held, y_fit, y_held = train_test_split(features, y, test_size=0.25)
            start = time.perf_counter()
            classifier = SGDClassifier(max_iter=200).fit(x_fit, y_fit)
            seconds = time.perf_counter() - start
            # "test_accuracy" stays the held-out quarter of train (the tutorial's figure, and where the other
            # benchmarks read it); the official test set is recorded beside it.
            results[name] = {"train_seconds": seconds, "test_accuracy": float(classifier.score(x_held, y_held)),
                             "evaluated_on": "held-out 25% of train", "n_iter": int(classifier.n_iter_),
                             "official_test_accuracy": float(classifier.score(xt.reshape(-1, 784) / 255, yt))}
            continue
        model, inputs, test_inputs, batch = network(name)
        # The tutorial's compile(optimizer="rmsprop"), spelled as the class so that tf_keras gets its legacy
        # (optimizer_v2) RMSprop: in tf_keras >= 2.11 the string means the new one, epsilon inside the sqrt.
        model.compile(optimizer=make_rmsprop(), loss="categorical_crossentropy", metrics=["accuracy"])
        timer = EpochTimer()
        start = time.perf_counter()
        model.fit(inputs, onehot, epochs=epochs, batch_size=batch, verbose=0, callbacks=[timer])
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(test_inputs, onehot_t, verbose=0)
        used = type(model.optimizer)
        results[name] = {"train_seconds": seconds, "epoch_seconds": timer.seconds, "test_accuracy": float(accuracy),
                         "optimizer_class": f"{used.__module__}.{used.__qualname__}"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="softmax,mlp,cnn,sgd")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--optimizer", choices=["legacy", "keras3", "both"], default="legacy",
                        help="legacy: tf_keras + its optimizer_v2 RMSprop (the tutorial's rule, default); "
                             "keras3: Keras 3's RMSprop; both: legacy, then keras3 under 'keras3'")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed Python, numpy and TensorFlow before each experiment (default: unseeded, as the "
                             "tutorial)")
    args = parser.parse_args()
    names = args.only.split(",")
    if args.optimizer == "keras3":
        print(json.dumps(run_experiments("keras3", names, args.epochs, args.seed)))
        return
    results = run_experiments("legacy", names, args.epochs, args.seed)
    if args.optimizer == "both":
        # The SGD baseline is scikit-learn, not Keras: once is enough.
        results["keras3"] = run_experiments("keras3", [n for n in names if n != "sgd"], args.epochs,
                                             args.seed)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
