"""mnistlab's RMSprop against the tutorial's own optimizer, not against a formula written from memory.

The oracle is ``tf_keras.optimizers.legacy.RMSprop`` (the ``optimizer_v2`` code of tf.keras 2.x, which the tutorial
ran), recorded once by ``benchmarks/record_keras_rmsprop.py`` into ``tests/fixtures/keras_legacy_rmsprop.json``
(gradients, trajectories, the versions that made them), so every run of the suite checks it without TensorFlow.
The same gradients were also stepped through Keras 3's RMSprop (epsilon inside the square root): mnistlab must
match the first and not the second, which shows the fixture can tell the two rules apart. Where tf_keras is
importable, a live test steps it side by side with mnistlab on fresh gradients.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.models import build_model
from mnistlab.optim import KerasRMSprop
from mnistlab.training import build_optimizer, build_schedule

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "keras_legacy_rmsprop.json"
TOLERANCE = 1e-6  # the bound; float32 round-off over 50 steps is ~1e-8 here

Factory = Callable[[Iterable[nn.Parameter]], Any]


@functools.cache
def fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def load_benchmark(name: str) -> ModuleType:
    """A module from benchmarks/ (not a package), to test the code the benchmarks actually run."""
    if f"_bench_{name}" in sys.modules:
        return sys.modules[f"_bench_{name}"]
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def replay(make_optimizer: Factory, initial: dict[str, np.ndarray],
           grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Step an optimizer over float32 parameters with the given gradients; name -> (steps + 1, n) values."""
    names = list(initial)
    params = [nn.Parameter(torch.tensor(initial[name], dtype=torch.float32)) for name in names]
    optimizer = make_optimizer(params)
    rows = {name: [initial[name].astype(np.float32)] for name in names}
    for step in range(len(grads[names[0]])):
        for name, param in zip(names, params, strict=True):
            param.grad = torch.tensor(grads[name][step], dtype=torch.float32)
        optimizer.step()
        for name, param in zip(names, params, strict=True):
            rows[name].append(param.detach().numpy().copy())
    return {name: np.stack(values) for name, values in rows.items()}


def arrays(section: dict[str, list]) -> dict[str, np.ndarray]:
    return {name: np.asarray(values, dtype=np.float32) for name, values in section.items()}


def replay_fixture(make_optimizer: Factory) -> dict[str, np.ndarray]:
    return replay(make_optimizer, arrays(fixture()["initial"]), arrays(fixture()["gradients"]))


def max_gap(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], names: Iterable[str]) -> float:
    return max(float(np.max(np.abs(ours[name] - reference[name]))) for name in names)


# What trains in mnistlab (`train --optimizer rmsprop`), the class with its own defaults, and the plain-PyTorch
# peer of benchmarks/ (torch.optim.RMSprop configured as Keras): all three claim the tutorial's rule.
MNISTLAB_RMSPROPS: dict[str, Factory] = {
    "build_optimizer('rmsprop')": lambda params: build_optimizer("rmsprop", params, lr=1e-3),
    "KerasRMSprop defaults": lambda params: KerasRMSprop(params),
    "benchmarks peer (torch.optim)": lambda params: load_benchmark("peers").keras_rmsprop(params),
}


def test_fixture_says_what_made_it() -> None:
    """The recorded settings are Keras' defaults and mnistlab's; the versions are named; 50 steps, both regimes."""
    record = fixture()
    assert record["settings"] == {"learning_rate": 1e-3, "rho": 0.9, "epsilon": 1e-7, "momentum": 0.0,
                                  "centered": False}
    default = KerasRMSprop([nn.Parameter(torch.zeros(1))])
    assert (default.lr, default.rho, default.eps) == (1e-3, 0.9, 1e-7)
    assert record["optimizers"]["legacy"]["class"] == "tf_keras.optimizers.legacy.RMSprop"
    assert set(record["versions"]) >= {"tensorflow", "tf_keras", "numpy", "python"}
    assert record["steps"] == 50
    for section in ("gradients", "trajectories"):
        assert section in record
    for name, grads in arrays(record["gradients"]).items():
        assert grads.shape[0] == 50, name
        for label in ("legacy", "keras3"):
            assert arrays(record["trajectories"][label])[name].shape == (51, grads.shape[1])
    tiny = np.abs(arrays(record["gradients"])["tiny"])
    large = np.abs(arrays(record["gradients"])["large"])
    assert tiny.min() >= 1e-6 and tiny.max() <= 1e-4
    assert large.min() >= 10 and large.max() <= 1e3


@pytest.mark.parametrize("make_optimizer", MNISTLAB_RMSPROPS.values(), ids=MNISTLAB_RMSPROPS.keys())
def test_matches_the_tutorials_rmsprop(make_optimizer: Factory) -> None:
    """50 steps on tiny, large and mixed gradients: max |ours - tf_keras legacy| <= 1e-6 at every step."""
    legacy = arrays(fixture()["trajectories"]["legacy"])
    ours = replay_fixture(make_optimizer)
    assert max_gap(ours, legacy, legacy) <= TOLERANCE


def test_does_not_match_keras3s_rule_where_the_rules_differ() -> None:
    """Keras 3's sqrt(v + eps) is another rule: on tiny gradients mnistlab must be far from it (so the previous
    test can tell the two apart), while on large ones, where g^2 >> eps, the two rules agree."""
    keras3 = arrays(fixture()["trajectories"]["keras3"])
    legacy = arrays(fixture()["trajectories"]["legacy"])
    ours = replay_fixture(MNISTLAB_RMSPROPS["build_optimizer('rmsprop')"])
    assert max_gap(ours, keras3, ["tiny"]) > 1000 * TOLERANCE
    assert max_gap(ours, keras3, ["mixed"]) > 1000 * TOLERANCE
    assert max_gap(legacy, keras3, ["tiny"]) > 1000 * TOLERANCE
    assert max_gap(ours, keras3, ["large"]) <= TOLERANCE


def test_live_against_tf_keras() -> None:
    """Where tf_keras is importable: fresh gradients (another seed) stepped through tf_keras' legacy RMSprop and
    mnistlab's side by side, and the fixture's gradients re-run to show the recording is not stale."""
    pytest.importorskip("tf_keras", reason="tf_keras (TensorFlow) is not installed: the one skip the suite allows, "
                        "because CI cannot install TensorFlow; the recorded fixture covers the same check")
    recorder = load_benchmark("record_keras_rmsprop")
    initial, grads = recorder.make_problem(seed=recorder.SEED + 1)
    live = recorder.legacy_trajectory(initial, grads)
    ours = replay(MNISTLAB_RMSPROPS["build_optimizer('rmsprop')"], initial, grads)
    assert max_gap(ours, live, live) <= TOLERANCE
    assert max_gap(ours, recorder.keras3_trajectory(initial, grads), ["tiny"]) > 1000 * TOLERANCE
    rerun = recorder.legacy_trajectory(arrays(fixture()["initial"]), arrays(fixture()["gradients"]))
    assert max_gap(rerun, arrays(fixture()["trajectories"]["legacy"]), rerun) <= TOLERANCE


def test_onecycle_schedule_shape() -> None:
    """Warm-up over the first 25% of steps to the peak lr, then annealing to (almost) zero."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("adam", [param], lr=5e-3)
    schedule = build_schedule("onecycle", optimizer, lr=5e-3, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.lr)
        param.grad = torch.ones(1)
        optimizer.step()
        schedule.step()
    peak = max(range(100), key=lrs.__getitem__)
    assert abs(peak - 25) <= 1
    assert lrs[peak] == pytest.approx(5e-3)
    assert lrs[0] == pytest.approx(5e-3 / 25)       # OneCycle's default div_factor
    assert lrs[-1] < 1e-5
    assert all(a <= b for a, b in itertools.pairwise(lrs[:peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))


@pytest.mark.parametrize("total", [7, 40, 235])
def test_onecycle_matches_torch_onecycle_lr(total: int) -> None:
    """Same learning rates and Adam beta1 as torch.optim.lr_scheduler.OneCycleLR at every step."""
    ours_param, torch_param = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    ours = build_optimizer("adam", [ours_param], lr=0.016)
    schedule = build_schedule("onecycle", ours, lr=0.016, total_steps=total)
    reference = torch.optim.Adam([torch_param], lr=0.016)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.016, total_steps=total,
                                                         pct_start=0.25)
    for _ in range(total):
        assert ours.lr == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12)
        assert ours.beta1 == pytest.approx(reference.param_groups[0]["betas"][0], rel=1e-12)
        for param in (ours_param, torch_param):
            param.grad = torch.ones(3)
        ours.step()
        reference.step()
        schedule.step()
        if torch_schedule.last_epoch < total - 1:
            torch_schedule.step()


@pytest.mark.parametrize(("name", "make_reference"), [
    ("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-7)),
    ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-7)),
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)),
])
def test_optimizers_match_torch_optim(name: str, make_reference) -> None:
    """Our fused optimizers against torch.optim configured the same way, on a real model's gradients."""
    torch.manual_seed(0)
    model = build_model("cnn")
    twin = build_model("cnn")
    twin.load_state_dict(model.state_dict())
    ours = build_optimizer(name, model.parameters(), lr={"sgd": 1e-2}.get(name, 1e-3))
    reference = make_reference(twin.parameters())
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(5):
        for net, optimizer in ((model, ours), (twin, reference)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    for (key, mine), theirs in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=key)


def test_optimizer_skips_parameters_without_gradients() -> None:
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = build_optimizer("adam", [used, unused], lr=0.1)
    used.grad = torch.ones(2)
    optimizer.step()
    assert torch.all(used < 1) and torch.equal(unused.detach(), torch.ones(2))


def test_constant_schedule_is_none() -> None:
    optimizer = build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_schedule("constant", optimizer, lr=0.1, total_steps=10) is None


def test_bad_schedule_name_in_library() -> None:
    with pytest.raises(MnistlabError, match="`schedule`"):
        build_schedule("cosine", build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1), lr=0.1,
                       total_steps=5)
