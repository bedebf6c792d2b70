"""Writes examples/mnist-tour.ipynb (output-free) from the cells below: `python examples/make_tour.py`.

The notebook is the Keras tutorial's walk-through done with mnistlab's API. The test suite executes it in a
real Jupyter kernel with short settings (the environment variable MNISTLAB_TOUR_QUICK=1).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

CELLS: list[tuple[str, str]] = [
    ("markdown", """# MNIST with mnistlab: the Keras tutorial, as a notebook

The classic tutorial loads MNIST, looks at it, builds a softmax layer, an MLP and a small CNN, trains each with
RMSprop, plots the curves, evaluates on the test set, and compares with scikit-learn's `SGDClassifier`. This
notebook does the same with mnistlab's Python API, then goes further: the full evaluation, a model of your own,
and reading a digit drawn by hand.

It trains with the tutorial's own settings (30 epochs of each network: several minutes on a laptop CPU, seconds
on a GPU). For a first look, set `QUICK = True` in the next cell: one epoch each."""),
    ("code", """import os

import matplotlib.pyplot as plt
import numpy as np

import mnistlab

QUICK = os.environ.get("MNISTLAB_TOUR_QUICK") == "1"   # True: one epoch each (the test suite runs it so)
EPOCHS = 1 if QUICK else 30
LIMIT = dict(registry=False)       # keep this tour out of your run registry (its runs go to ./runs/)
print(mnistlab.__version__)"""),
    ("markdown", "## The data: uint8 arrays, checked against their published SHA-256"),
    ("code", """mnist = mnistlab.datasets.load("mnist")
print(mnist.checksums, mnist.train.images.shape, mnist.train.images.dtype, mnist.test.images.shape)
print("labels per class:", np.bincount(mnist.train.labels))"""),
    ("code", """fig, axes = plt.subplots(2, 8, figsize=(10, 3))
for ax, image, label in zip(axes.flat, mnist.train.images, mnist.train.labels, strict=False):
    ax.imshow(image, cmap="gray")
    ax.set_title(int(label))
    ax.axis("off")
plt.show()"""),
    ("markdown", "## The three networks and their summaries (Keras-style)"),
    ("code", """for name in ("softmax", "mlp", "cnn"):
    print(mnistlab.models.summary(name))
    print()"""),
    ("markdown", """## Training

`mnistlab.train` returns a `Run`: its folder on disk, `history` (per-epoch `loss`, `accuracy`, `val_loss`,
`val_accuracy`, as Keras' `History.history`), `metrics` (the test figures) and the trained `model`. Progress
shows live below each cell."""),
    ("code", """runs = {}
for name in ("softmax", "mlp", "cnn"):
    runs[name] = mnistlab.train(name, epochs=EPOCHS, val_split=0.1, **LIMIT)
    print(name, "test accuracy", round(runs[name].metrics["test_accuracy"], 4))"""),
    ("code", """fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
for name, run in runs.items():
    epochs = range(1, len(run.history["loss"]) + 1)
    loss_ax.plot(epochs, run.history["loss"], marker="o", label=f"{name} train")
    loss_ax.plot(epochs, run.history["val_loss"], marker="x", linestyle="--", label=f"{name} val")
    acc_ax.plot(epochs, run.history["val_accuracy"], marker="o", label=name)
loss_ax.set(xlabel="epoch", ylabel="loss")
loss_ax.legend()
acc_ax.set(xlabel="epoch", ylabel="validation accuracy")
acc_ax.legend()
plt.show()"""),
    ("markdown", "## Evaluation: where the CNN fails"),
    ("code", """evaluation = runs["cnn"].evaluate(**LIMIT)
print(f"accuracy {evaluation.accuracy:.4f}, ECE {100 * evaluation.calibration.ece:.2f}%")
print(evaluation.report.as_text(digits=4))
evaluation"""),
    ("code", """fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(evaluation.confusion, cmap="Blues")
ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
for (i, j), count in np.ndenumerate(evaluation.confusion):
    if count:
        ax.text(j, i, count, ha="center", va="center", fontsize=7)
plt.show()
print("most confused:", [(p.true, p.predicted, p.count) for p in evaluation.pairs[:3]])"""),
    ("markdown", """## The tutorial's scikit-learn baseline

`sgd` is `SGDClassifier(max_iter=200)`; the tutorial scored it on a 75/25 split of the training set."""),
    ("code", """sgd = mnistlab.train("sgd", options={"max_iter": 5 if QUICK else 200}, val_split=0.25, **LIMIT)
print("held-out accuracy", round(sgd.history["val_accuracy"][0], 4), "test accuracy",
      round(sgd.metrics["test_accuracy"], 4))"""),
    ("markdown", """## A model of your own

Any function that builds an `nn.Module` taking `(B, 1, 28, 28)` floats in [0, 1] and returning logits trains,
saves, reloads, evaluates and predicts like the built-in models."""),
    ("code", """from torch import nn


def small_convnet(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, num_classes),
    )

mine = mnistlab.train(small_convnet, epochs=1 if QUICK else 3, optimizer="adam", lr=2e-3, **LIMIT)
print(mine.summary())
print("test accuracy", round(mine.metrics["test_accuracy"], 4))"""),
    ("markdown", """## Read a drawn digit

A drawing looks nothing like MNIST until it is prepared the way MNIST was made (cropped, scaled to a 20-pixel
box, centred by mass). `run.predict` does that for paths, PIL images and arrays."""),
    ("code", """from PIL import Image, ImageDraw

canvas = Image.new("L", (200, 200), 255)                    # black ink on white paper, like a pen drawing
pen = ImageDraw.Draw(canvas)
pen.line([(60, 40), (140, 40), (90, 170)], fill=0, width=14)  # a 7
prediction = runs["cnn"].predict(canvas)[0]
print("read as", prediction.label, [(name, round(p, 3)) for _, name, p in prediction.top(3)])
seen = mnistlab.prepare_image(canvas).pixels                 # the 28x28 the model saw
fig, (a, b) = plt.subplots(1, 2, figsize=(5, 2.5))
for ax, image, title in ((a, canvas, "drawn"), (b, seen, f"seen: {prediction.label}")):
    ax.imshow(image, cmap="gray")
    ax.set_title(title)
    ax.axis("off")
plt.show()"""),
]


def build() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
                      for kind, text in CELLS]
    for i, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    return notebook


if __name__ == "__main__":
    target = Path(__file__).with_name("mnist-tour.ipynb")
    nbformat.write(build(), target)
    print(f"wrote {target}")
