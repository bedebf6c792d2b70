"""The seed tutorial's four experiments in Keras, with its exact settings, for side-by-side timing.

Run with a Python that has TensorFlow/Keras installed (not a mnistlab dependency):

    /path/to/tf-python benchmarks/keras_seed.py [--only softmax,mlp,cnn,sgd] [--epochs 30]

Data comes from mnistlab's bundled files (no download). Prints one JSON object: per experiment the training
seconds (``model.fit`` only) and the test accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

MNIST_DIR = Path(__file__).resolve().parents[1] / "src" / "mnistlab" / "datasets" / "mnist"


def read(name: str, offset: int) -> np.ndarray:
    with gzip.open(MNIST_DIR / f"{name}.gz", "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="softmax,mlp,cnn,sgd")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()

    import keras
    from keras import layers

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
    results: dict = {"keras": keras.__version__, "backend": keras.backend.backend(), "epochs": args.epochs}

    def network(name: str) -> tuple[keras.Model, np.ndarray, np.ndarray, int]:
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

    for name in args.only.split(","):
        if name == "sgd":
            from sklearn.linear_model import SGDClassifier
            from sklearn.model_selection import train_test_split

            features = x.reshape(-1, 784).astype("float32") / 255
            x_fit, x_held, y_fit, y_held = train_test_split(features, y, test_size=0.25)
            start = time.perf_counter()
            classifier = SGDClassifier(max_iter=200).fit(x_fit, y_fit)
            seconds = time.perf_counter() - start
            results[name] = {"train_seconds": seconds, "test_accuracy": float(classifier.score(x_held, y_held))}
            continue
        model, inputs, test_inputs, batch = network(name)
        model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
        timer = EpochTimer()
        start = time.perf_counter()
        model.fit(inputs, onehot, epochs=args.epochs, batch_size=batch, verbose=0, callbacks=[timer])
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(test_inputs, onehot_t, verbose=0)
        results[name] = {"train_seconds": seconds, "epoch_seconds": timer.seconds, "test_accuracy": float(accuracy)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
