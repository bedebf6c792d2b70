"""benchmarks/fast_selection.py reproduces the selection RESULTS.md records: its ``RECIPE`` candidate is today's
``fast`` recipe, and the candidates measured before it keep the full-epoch base they were measured on."""

from __future__ import annotations

import sys

import torch

from mnistlab.config import TrainConfig
from mnistlab.models import build_fast
from tests.benchtools import ROOT, load_benchmark

sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its sibling _common
selection = load_benchmark("fast_selection")
timing = load_benchmark("time_to_accuracy")


def _config(name: str) -> TrainConfig:
    _, overrides = selection.candidates()[name]
    settings = {key: value for key, value in {**selection.BASE, **overrides}.items() if not key.startswith("_")}
    return TrainConfig.for_model("fast", device="cpu", **settings)


def test_the_recipe_candidate_is_todays_fast_recipe() -> None:
    assert _config(selection.RECIPE) == TrainConfig.for_model("fast", device="cpu")
    builder, _ = selection.candidates()[selection.RECIPE]
    torch.manual_seed(0)
    theirs = builder()
    torch.manual_seed(0)
    ours = build_fast()
    def layout(model: torch.nn.Module) -> list[tuple[str, torch.Size]]:
        return [(key, value.shape) for key, value in model.state_dict().items()]

    assert layout(theirs) == layout(ours)


def test_earlier_candidates_train_as_they_were_measured() -> None:
    # The recipe before stop 25, as time_to_accuracy.py times it: one full epoch, every image back-propagated.
    old = _config("16-32-64 (chosen)")
    assert old == TrainConfig.for_model("fast", device="cpu", **timing.PREVIOUS_FAST)
    assert (old.epoch_fraction, old.backprop_fraction) == (1.0, 1.0)
    # The wrapper that does its own selection must not be selected for twice.
    wrapped = [name for name, *_ in selection.SELECTIVE]
    assert wrapped and all(_config(name).backprop_fraction == 1.0 for name in wrapped)


def test_main_trains_every_candidate_over_the_full_epoch_base(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """main() itself hands BASE to the scoring (scoring and writing replaced: nothing trains or is written)."""
    seen = {}

    def fake_score(model, table, chosen, *, seeds, defaults=None):  # type: ignore[no-untyped-def]
        seen.update(model=model, chosen=chosen, defaults=defaults)
        return {name: [(1.0, 0.99)] * seeds for name in chosen}

    monkeypatch.setattr(selection, "score_candidates", fake_score)
    monkeypatch.setattr(selection, "write_json", lambda name, payload: seen.update(written=payload) or name)
    monkeypatch.setattr(selection, "isolate_registry", lambda: None)
    monkeypatch.setattr(sys, "argv", ["fast_selection.py", "--seeds", "1", "--candidates",
                                      f"16-32-64 (chosen),{selection.RECIPE}"])
    selection.main()
    assert seen["model"] == "fast" and seen["defaults"] == selection.BASE
    recorded = seen["written"]["candidates"]
    assert recorded["16-32-64 (chosen)"]["backprop_fraction"] == 1.0
    recipe = recorded[selection.RECIPE]
    assert (recipe["epoch_fraction"], recipe["backprop_fraction"]) == (0.8, 0.5)
    assert "(today's recipe)" in capsys.readouterr().out
