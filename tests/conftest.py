"""Shared fixtures: tiny IDX datasets written to disk, the real MNIST loaded once, and trained runs.

Trained runs are session-scoped: several test modules (evaluation, prediction, the server) reuse the same
run directory instead of training again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnistlab.config import TrainConfig
from mnistlab.data import FILE_STEMS, load_dataset, write_idx
from mnistlab.training import fit
from tests.systemdeps import CheckoutGuard, SystemDependencies

CHECKOUT = Path(__file__).resolve().parents[1]

pytest_plugins = ("pytester",)  # tests/test_setup.py runs inner pytest sessions


def pytest_configure(config: pytest.Config) -> None:
    """Missing Debian packages fail (or, on explicit opt-out, skip and say so); the checkout must stay unchanged."""
    config.pluginmanager.register(SystemDependencies.from_environment(), "mnistlab-system-deps")
    config.pluginmanager.register(CheckoutGuard(CHECKOUT), "mnistlab-checkout-guard")


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep every test away from the user's real mnistlab home (registry, caches)."""
    home = tmp_path_factory.mktemp("mnistlab-home")
    old = os.environ.get("MNISTLAB_HOME")
    os.environ["MNISTLAB_HOME"] = str(home)
    yield
    if old is None:
        os.environ.pop("MNISTLAB_HOME", None)
    else:
        os.environ["MNISTLAB_HOME"] = old


def make_digits(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic, learnable 'digits': class k lights up a class-specific 6x6 block, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for k in range(10):
        row, col = 2 + 8 * (k // 3), 2 + 8 * (k % 3)
        images[labels == k, row:row + 6, col:col + 6] = 230
    return images, labels


def write_dataset_dir(directory: Path, *, n_train: int = 256, n_test: int = 64, gz: bool = True,
                      seed: int = 0) -> Path:
    """Write the four IDX files of a small synthetic dataset into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_digits(n_train, seed=seed)
    test_x, test_y = make_digits(n_test, seed=seed + 1)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    suffix = ".gz" if gz else ""
    for role, array in arrays.items():
        write_idx(directory / (FILE_STEMS[role] + suffix), array)
    return directory


@pytest.fixture()
def tiny_data_dir(tmp_path: Path) -> Path:
    """A folder with a 256/64-sample synthetic dataset in gzipped IDX files."""
    return write_dataset_dir(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_data_dir_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_data_dir`` but written once per session (read-only use)."""
    return write_dataset_dir(tmp_path_factory.mktemp("tiny-shared"))


@pytest.fixture(scope="session")
def mnist():
    """The bundled MNIST, loaded and verified once."""
    from mnistlab.data import load_dataset

    return load_dataset("mnist")


@pytest.fixture(scope="session")
def trained_mlp_run(tmp_path_factory: pytest.TempPathFactory, mnist) -> Path:
    """An MLP trained 2 epochs on real MNIST (about 97% test accuracy, a couple of seconds)."""
    from mnistlab.config import TrainConfig
    from mnistlab.training import fit

    run_dir = tmp_path_factory.mktemp("runs") / "mlp"
    fit(TrainConfig.for_model("mlp", epochs=2, val_split=0.1, device="cpu"), run_dir=run_dir, dataset=mnist)
    return run_dir


@pytest.fixture(scope="session")
def trained_cnn_run(tmp_path_factory: pytest.TempPathFactory, mnist) -> Path:
    """The seed's CNN trained 1 epoch on real MNIST (about 97.5%+ test accuracy)."""
    from mnistlab.config import TrainConfig
    from mnistlab.training import fit

    run_dir = tmp_path_factory.mktemp("runs") / "cnn"
    fit(TrainConfig.for_model("cnn", epochs=1, device="cpu"), run_dir=run_dir, dataset=mnist)
    return run_dir


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir_shared: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("edge") / "mlp"
    fit(TrainConfig.for_model("mlp", epochs=1, batch_size=64, device="cpu"), run_dir=run_dir,
        dataset=load_dataset(data_dir=tiny_data_dir_shared))
    return run_dir
