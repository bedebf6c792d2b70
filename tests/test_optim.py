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
import itertools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.models import build_model
from mnistlab.optim import KerasRMSprop
from mnistlab.training import build_optimizer, build_schedule
from tests.benchtools import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "keras_legacy_rmsprop.json"
TOLERANCE = 1e-6  # the bound; float32 round-off over 50 steps is ~1e-8 here

Factory = Callable[[Iterable[nn.Parameter]], Any]


@functools.cache
def fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


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
        build_schedule("linear", build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1), lr=0.1,
                       total_steps=5)


# ------------------------------------------------------------------ cosine, step, plateau and AdamW vs torch.optim
def twin_problem(seed: int = 0) -> tuple[nn.Module, nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Two identical small networks and a few batches, so both optimizers see real (changing) gradients."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    twin = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    twin.load_state_dict(model.state_dict())
    batches = [(torch.randn(16, 12), torch.randint(0, 4, (16,))) for _ in range(5)]
    return model, twin, batches


def train_step(net: nn.Module, optimizer: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(net(batch[0]), batch[1])
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def assert_same_weights(ours: nn.Module, theirs: nn.Module) -> None:
    for (key, mine), other in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-5, atol=1e-6, msg=key)


def torch_adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Keras' Adam in torch.optim: AdamW when decaying (torch.optim.Adam's weight_decay is L2, another rule)."""
    if weight_decay:
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-7, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-7)


@pytest.mark.parametrize(("total", "min_lr", "weight_decay"), [(7, 0.0, 0.0), (40, 1e-4, 0.0), (235, 0.0, 0.05)])
def test_cosine_matches_torch_cosine_annealing_lr(total: int, min_lr: float, weight_decay: float) -> None:
    """Every step's lr as CosineAnnealingLR(T_max=total, eta_min=min_lr), which reaches min_lr after the last
    step; and the weights after ``total`` steps as torch.optim's (with and without AdamW's decay)."""
    model, twin, batches = twin_problem()
    ours = build_optimizer("adam", model.parameters(), lr=3e-3, weight_decay=weight_decay)
    schedule = build_schedule("cosine", ours, lr=3e-3, total_steps=total, options={"min_lr": min_lr})
    reference = torch_adam(twin.parameters(), 3e-3, weight_decay)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=total, eta_min=min_lr)
    for step in range(total):
        assert ours.lr == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        train_step(model, ours, batches[step % len(batches)])
        train_step(twin, reference, batches[step % len(batches)])
        schedule.step()
        torch_schedule.step()
    assert ours.lr == pytest.approx(min_lr, abs=1e-15) and reference.param_groups[0]["lr"] == pytest.approx(ours.lr)
    assert_same_weights(model, twin)
    schedule.step()                       # past the end it stays at the floor (torch's would climb back)
    assert ours.lr == pytest.approx(min_lr, abs=1e-15)


@pytest.mark.parametrize(("step_size", "gamma"), [(1, 0.5), (3, 0.1), (10, 0.7)])
def test_step_matches_torch_step_lr(step_size: int, gamma: float) -> None:
    """The lr of each of 12 epochs (3 steps each) as StepLR(step_size, gamma) stepped per epoch; same weights."""
    model, twin, batches = twin_problem(1)
    ours = build_optimizer("sgd", model.parameters(), lr=0.05)
    schedule = build_schedule("step", ours, lr=0.05, total_steps=36, options={"step_size": step_size, "gamma": gamma})
    assert schedule is not None
    reference = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    torch_schedule = torch.optim.lr_scheduler.StepLR(reference, step_size=step_size, gamma=gamma)
    seen = []
    for epoch in range(12):
        assert ours.lr == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12), epoch
        seen.append(ours.lr)
        for batch in batches[:3]:
            train_step(model, ours, batch)
            train_step(twin, reference, batch)
            schedule.step()               # per-step calls must not move a per-epoch schedule
        schedule.epoch_end(0.0)
        torch_schedule.step()
    assert seen == pytest.approx([0.05 * gamma ** (e // step_size) for e in range(12)], rel=1e-12)
    assert_same_weights(model, twin)


def torch_plateau_for_keras(optimizer: torch.optim.Optimizer, *, factor: float, patience: int, min_delta: float,
                            cooldown: int, min_lr: float) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """torch's ReduceLROnPlateau configured to act as Keras' (the oracle's mapping).

    - patience: Keras cuts when its wait count reaches ``patience`` (``wait >= patience``, counted after the bad
      epoch); torch when its count *exceeds* its patience (``num_bad_epochs > patience``). So torch's is Keras'
      minus one; Keras' 0 acts as 1 (the count is already 1 when compared), hence max(p - 1, 0).
    - cooldown: Keras ends the cooldown (counter -= 1) *before* it looks at the epoch, so a cooldown of c leaves
      c - 1 epochs uncounted; torch counts first and then zeroes the count for each of its c cooldown epochs.
      So torch's is Keras' minus one (Keras' 0 and 1 both leave none): max(c - 1, 0).
    - min_delta is absolute in Keras (``value < best - min_delta``): threshold_mode="abs"; mode "min".
    - eps=0: Keras cuts whenever lr > min_lr; torch's default eps 1e-8 would skip cuts smaller than that.
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=max(patience - 1, 0), threshold=min_delta,
        threshold_mode="abs", cooldown=max(cooldown - 1, 0), min_lr=min_lr, eps=0.0)


# Monitored figures with plateaus, small (below min_delta) and real improvements, a NaN, and a long flat end.
PLATEAU_FIGURES = [1.0, 0.9, 0.95, 0.9, 0.89995, 0.91, 0.7, 0.7, 0.7, 0.71, 0.69, 0.6999, 0.5, 0.5, float("nan"),
                   0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]


@pytest.mark.parametrize("settings", [
    {},                                                                   # Keras' defaults (patience 10)
    {"patience": 1},
    {"patience": 0},
    {"patience": 2, "factor": 0.5},
    {"patience": 2, "cooldown": 1},
    {"patience": 1, "cooldown": 3, "min_delta": 0.0},
    {"patience": 3, "cooldown": 2, "min_delta": 0.02, "factor": 0.2},
    {"patience": 1, "factor": 0.5, "min_lr": 2e-4},
], ids=str)
def test_plateau_matches_torch_reduce_lr_on_plateau_mapped_to_keras(settings: dict[str, Any]) -> None:
    """Each epoch's lr on crafted figures as torch's ReduceLROnPlateau with Keras' rule mapped onto its arguments;
    the weights after the epochs (2 steps each) as torch.optim's."""
    params = {"factor": 0.1, "patience": 10, "min_delta": 1e-4, "cooldown": 0, "min_lr": 0.0, **settings}
    model, twin, batches = twin_problem(2)
    ours = build_optimizer("adam", model.parameters(), lr=1e-3)
    schedule = build_schedule("plateau", ours, lr=1e-3, total_steps=60, options=params)
    assert schedule is not None
    reference = torch_adam(twin.parameters(), 1e-3)
    torch_schedule = torch_plateau_for_keras(reference, **params)
    lrs = []
    for epoch, figure in enumerate(PLATEAU_FIGURES):
        for batch in batches[epoch % 4:epoch % 4 + 2]:
            train_step(model, ours, batch)
            train_step(twin, reference, batch)
        schedule.epoch_end(figure)
        torch_schedule.step(figure)
        lrs.append(ours.lr)
        assert ours.lr == reference.param_groups[0]["lr"], epoch
    if settings:
        assert len(set(lrs)) > 1            # each non-default setting cuts the lr at least once on these figures
    assert min(lrs) >= params["min_lr"]
    assert_same_weights(model, twin)


def test_plateau_follows_keras_patience_not_torchs() -> None:
    """Keras' patience 2 on a flat figure: the 1st epoch sets the best, the 2nd and 3rd do not improve, so the lr
    is cut after the 3rd epoch, and again two epochs later (hand-derived from Keras' rule). torch's
    ReduceLROnPlateau given the same patience cuts one epoch later: the mapping above is needed."""
    ours = build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_schedule("plateau", ours, lr=1.0, total_steps=10, options={"patience": 2})
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    unmapped = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, patience=2, threshold=1e-4,
                                                          threshold_mode="abs")
    lrs, torch_lrs = [], []
    for _ in range(6):
        schedule.epoch_end(1.0)  # type: ignore[union-attr]
        unmapped.step(1.0)
        lrs.append(ours.lr)
        torch_lrs.append(reference.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert torch_lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])


def test_plateau_cooldown_follows_keras() -> None:
    """Keras' cooldown 2, patience 1, flat figure: cut after epoch 2; epoch 3 is in cooldown; epoch 4 (the
    cooldown's last) already counts and cuts again; then epoch 5 rests, epoch 6 cuts."""
    ours = build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_schedule("plateau", ours, lr=1.0, total_steps=10, options={"patience": 1, "cooldown": 2})
    lrs = []
    for _ in range(6):
        schedule.epoch_end(1.0)  # type: ignore[union-attr]
        lrs.append(ours.lr)
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize("weight_decay", [0.01, 0.3])
def test_adamw_matches_torch_adamw_on_a_real_model(weight_decay: float) -> None:
    """Decoupled weight decay: the CNN's weights after 5 steps as torch.optim.AdamW's, and not as Adam's with
    L2 (torch.optim.Adam's weight_decay), which shows the test tells the two rules apart."""
    torch.manual_seed(0)
    model, twin, l2 = build_model("cnn"), build_model("cnn"), build_model("cnn")
    twin.load_state_dict(model.state_dict())
    l2.load_state_dict(model.state_dict())
    ours = build_optimizer("adam", model.parameters(), lr=1e-3, weight_decay=weight_decay)
    reference = torch_adam(twin.parameters(), 1e-3, weight_decay)
    coupled = torch.optim.Adam(l2.parameters(), lr=1e-3, eps=1e-7, weight_decay=weight_decay)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(5):
        for net, optimizer in ((model, ours), (twin, reference), (l2, coupled)):
            train_step(net, optimizer, (x, y))
    assert_same_weights(model, twin)
    gap = max(float((a - b).detach().abs().max()) for a, b in zip(model.parameters(), l2.parameters(), strict=True))
    assert gap > 1e-4


def test_weight_decay_is_refused_for_rmsprop_and_sgd_in_the_library() -> None:
    for name in ("rmsprop", "sgd"):
        with pytest.raises(MnistlabError, match="`weight_decay` is decoupled weight decay for adam"):
            build_optimizer(name, [nn.Parameter(torch.zeros(1))], lr=0.1, weight_decay=0.01)


def test_unknown_schedule_option_in_the_library() -> None:
    with pytest.raises(MnistlabError, match=r"option\(s\) patience do not apply to the step schedule"):
        build_schedule("step", build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1), lr=0.1,
                       total_steps=5, options={"patience": 3})


@pytest.mark.parametrize(("name", "options"), [("cosine", {"min_lr": 1e-5}), ("step", {"step_size": 2}),
                                               ("plateau", {"patience": 1, "cooldown": 1, "min_delta": 0.05}),
                                               ("onecycle", {})])
def test_schedule_state_round_trips_through_json_exactly(name: str, options: dict[str, Any]) -> None:
    """A schedule rebuilt from another's JSON state after 4 epochs continues with identical lrs (and, for a
    plateau, identical counters), as a resumed run needs; another run's shape is refused."""
    figures = [0.9, 0.95, 0.93, 0.8, 0.85, 0.84, 0.83, 0.6, 0.61]

    def make() -> tuple[Any, Any]:
        optimizer = build_optimizer("adam", [nn.Parameter(torch.zeros(1))], lr=2e-3)
        return optimizer, build_schedule(name, optimizer, lr=2e-3, total_steps=27, options=options)

    def run_epochs(optimizer: Any, schedule: Any, epochs: list[float]) -> list[float]:
        lrs = []
        for figure in epochs:
            for _ in range(3):
                schedule.step()
                lrs.append(optimizer.lr)
            schedule.epoch_end(figure)
            lrs.append(optimizer.lr)
        return lrs

    first_opt, first = make()
    run_epochs(first_opt, first, figures[:4])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))   # strict JSON, as checkpoints are
    second_opt, second = make()
    second.load_state_dict(state)
    assert second_opt.lr == first_opt.lr
    assert run_epochs(second_opt, second, figures[4:]) == run_epochs(first_opt, first, figures[4:])
    assert second.state_dict() == first.state_dict()
    other_opt = build_optimizer("adam", [nn.Parameter(torch.zeros(1))], lr=1e-3)
    # Another run: another lr and length (a plateau ignores both: its lr is in the state), another patience.
    other_options = {**options, "patience": 4} if name == "plateau" else options
    other = build_schedule(name, other_opt, lr=1e-3, total_steps=30, options=other_options)
    with pytest.raises(ValueError, match="schedule state"):
        other.load_state_dict(state)  # type: ignore[union-attr]
