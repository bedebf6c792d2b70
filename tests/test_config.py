"""TrainConfig validation and the models' recipes."""

from __future__ import annotations

import pytest

from mnistlab.config import DEFAULT_LR, TrainConfig
from mnistlab.errors import MnistlabError


def test_recipes_are_the_seeds() -> None:
    assert (TrainConfig.for_model("softmax").epochs, TrainConfig.for_model("softmax").batch_size) == (30, 128)
    for name in ("mlp", "cnn"):
        config = TrainConfig.for_model(name)
        assert (config.epochs, config.batch_size, config.optimizer, config.lr) == (30, 200, "rmsprop", 1e-3)


def test_overrides_and_optimizer_default_lr() -> None:
    config = TrainConfig.for_model("cnn", epochs=2, optimizer="sgd", seed=None)
    assert config.epochs == 2 and config.batch_size == 200
    assert config.lr == DEFAULT_LR["sgd"] and config.seed == 0
    assert TrainConfig.for_model("cnn", optimizer="adam", lr=0.01).lr == 0.01


def test_round_trip_through_dict() -> None:
    config = TrainConfig.for_model("mlp", val_split=0.2, threads=1)
    assert TrainConfig.from_dict({**config.to_dict(), "unknown_future_key": 1}) == config


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epochs": 0}, "`epochs` must be a whole number >= 1"),
    ({"batch_size": 0}, "`batch_size` must be"),
    ({"val_split": 1.0}, r"`val_split` must be in \[0, 1\)"),
    ({"val_split": -0.5}, "`val_split`"),
    ({"lr": -1.0}, "`lr` must be a finite number > 0"),
    ({"lr": float("inf")}, "`lr` must be a finite number > 0"),
    ({"lr": float("nan")}, "`lr` must be a finite number > 0"),
    ({"seed": -1}, r"`seed` must be a whole number in 0\.\.4294967295"),
    ({"seed": 2**64}, "`seed` must be a whole number"),
    ({"optimizer": "lion"}, "`optimizer` 'lion'"),
    ({"device": "tpu"}, "`device` 'tpu'"),
    ({"threads": 0}, "`threads`"),
])
def test_invalid_values_are_one_clear_error(overrides: dict, message: str) -> None:
    """The library names the parameter (`epochs`); the CLI shows the same message with the flag (--epochs)."""
    from mnistlab.cli import flag_text

    with pytest.raises(MnistlabError, match=message) as raised:
        TrainConfig.for_model("softmax", **overrides)
    parameter = message.split("`")[1]
    assert f"--{parameter.replace('_', '-')}" in flag_text(str(raised.value))


def test_unknown_model() -> None:
    with pytest.raises(MnistlabError, match="unknown model 'vgg'; choose one of softmax, mlp, cnn"):
        TrainConfig.for_model("vgg")


def test_dense_models_default_to_one_thread() -> None:
    assert TrainConfig.for_model("softmax").threads == TrainConfig.for_model("mlp").threads == 1
    assert TrainConfig.for_model("cnn").threads is None and TrainConfig.for_model("fast").threads is None
    assert TrainConfig.for_model("mlp", threads=2).threads == 2


def test_softmax_recipe_trains_in_fp32() -> None:
    assert TrainConfig.for_model("softmax").precision == "fp32"
    assert TrainConfig.for_model("cnn").precision == "auto"
    assert TrainConfig.for_model("softmax", precision="bf16").precision == "bf16"


def test_published_figures_name_the_nearest_method() -> None:
    from mnistlab.config import published_figure

    assert published_figure("mlp").test_error == 0.0305 and "300+100" in published_figure("mlp").method
    assert published_figure("cnn").test_error == 0.0095 and "closest" in published_figure("cnn").method
    assert published_figure("forest") is None and published_figure("mlp", "fashion-mnist") is None


@pytest.mark.parametrize(("overrides", "message"), [
    ({"val_split": "0.1"}, "`val_split` must be a number, got '0.1'"),
    ({"lr": "0.01"}, "`lr` must be a number, got '0.01'"),
    ({"threads": 1.5}, "`threads` must be a whole number, got 1.5"),
    ({"batch_size": True}, "`batch_size` must be a whole number, got True"),
    ({"label_smoothing": "0.1"}, "`label_smoothing` must be a number"),
    ({"threads": 10_000}, "far more than this machine's"),
])
def test_wrong_types_from_python_callers_are_one_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(MnistlabError, match=message):
        TrainConfig.for_model("mlp", **overrides)


def test_fast_recipe_is_fixed_in_code() -> None:
    config = TrainConfig.for_model("fast")
    assert (config.epochs, config.batch_size, config.optimizer, config.schedule) == (1, 256, "adam", "onecycle")
    assert config.lr == 2.4e-2 and config.label_smoothing == 0.1 and config.augment == "none"
    # since stop 25: 80% of the epoch's images, the uncertain half of each batch back-propagated
    assert (config.epoch_fraction, config.backprop_fraction) == (0.8, 0.5)
    # a flag replaces them like any recipe value; the other models keep whole epochs and whole batches
    assert TrainConfig.for_model("fast", epoch_fraction=1.0, backprop_fraction=1.0).backprop_fraction == 1.0
    assert (TrainConfig.for_model("cnn").epoch_fraction, TrainConfig.for_model("best").backprop_fraction) == (1, 1)


@pytest.mark.parametrize("overrides, message", [
    ({"epoch_fraction": 0.0}, r"`epoch_fraction` must be a share in \(0, 1\], got 0.0"),
    ({"epoch_fraction": 1.5}, r"`epoch_fraction` must be a share in \(0, 1\], got 1.5"),
    ({"backprop_fraction": float("nan")}, r"`backprop_fraction` must be a share in \(0, 1\], got nan"),
    ({"backprop_fraction": -0.5}, r"`backprop_fraction` must be a share"),
    ({"backprop_fraction": "0.5"}, "`backprop_fraction` must be a number"),
    ({"epoch_fraction": True}, "`epoch_fraction` must be a number"),
])
def test_bad_fractions_are_one_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(MnistlabError, match=message):
        TrainConfig.for_model("fast", **overrides)


def test_fractions_are_for_networks_and_old_configs_read_as_whole() -> None:
    with pytest.raises(MnistlabError, match="`backprop_fraction` does not apply to sgd"):
        TrainConfig.for_model("sgd", backprop_fraction=0.5)
    config = TrainConfig.for_model("fast")
    assert TrainConfig.from_dict(config.to_dict()) == config
    # a run saved before stop 25 has neither key: it trained on whole epochs and whole batches
    old = {key: value for key, value in config.to_dict().items() if key not in ("epoch_fraction", "backprop_fraction")}
    assert (TrainConfig.from_dict(old).epoch_fraction, TrainConfig.from_dict(old).backprop_fraction) == (1.0, 1.0)


def test_best_recipe_is_fixed_in_code_and_augments() -> None:
    config = TrainConfig.for_model("best")
    assert (config.epochs, config.batch_size, config.optimizer, config.schedule) == (20, 128, "adam", "onecycle")
    assert (config.lr, config.label_smoothing, config.augment) == (5e-3, 0.1, "light")
    # the recipe's augmentation is a default like the others: a flag replaces it, None keeps it
    assert TrainConfig.for_model("best", augment="none").augment == "none"
    assert TrainConfig.for_model("best", augment=None).augment == "light"
    # and it is the recipe's only: another model's default stays none
    assert TrainConfig.for_model("cnn").augment == "none"


# ------------------------------------------------------------------------ schedule options and weight decay
def test_schedule_options_default_to_keras_and_torch_and_are_saved() -> None:
    """A network's options are its schedule's parameters, every default filled in (so config.json records them):
    Keras' ReduceLROnPlateau defaults, StepLR's gamma, CosineAnnealingLR's eta_min 0."""
    plateau = TrainConfig.for_model("mlp", schedule="plateau", options={"patience": 3})
    assert plateau.options == {"factor": 0.1, "patience": 3, "min_delta": 1e-4, "cooldown": 0, "min_lr": 0.0}
    assert TrainConfig.for_model("mlp", schedule="step").options == {"step_size": 10, "gamma": 0.1}
    assert TrainConfig.for_model("cnn", schedule="cosine").options == {"min_lr": 0.0}
    assert TrainConfig.for_model("cnn").options == {} == TrainConfig.for_model("fast").options
    assert TrainConfig.from_dict(plateau.to_dict()) == plateau
    wd = TrainConfig.for_model("mlp", optimizer="adam", weight_decay=0.01)
    assert TrainConfig.from_dict(wd.to_dict()).weight_decay == 0.01
    old = {key: value for key, value in wd.to_dict().items() if key != "weight_decay"}  # a run of before AdamW
    assert TrainConfig.from_dict(old).weight_decay == 0.0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"schedule": "plateau", "options": {"factor": 1.0}}, r"`options` factor=1.0: the plateau schedule's factor "
                                                          r"must be in \(0, 1\)"),
    ({"schedule": "plateau", "options": {"patience": 2.5}}, "plateau schedule's patience must be a whole number"),
    ({"schedule": "plateau", "options": {"cooldown": -1}}, r"cooldown must be in \[0, inf\)"),
    ({"schedule": "plateau", "options": {"min_delta": float("nan")}}, "min_delta must be in"),
    ({"schedule": "step", "options": {"step_size": 0}}, r"step_size must be in \[1, inf\)"),
    ({"schedule": "step", "options": {"gamma": 0.0}}, r"gamma must be in \(0, 1\]"),
    ({"schedule": "cosine", "options": {"min_lr": 0.01}}, "min_lr must be below it"),
    ({"schedule": "step", "options": {"patience": 3}}, r"`options` patience: not for the step schedule "
                                                       r"\(its options: step_size, gamma\)"),
    ({"options": {"k": 3}}, r"`options` k: not for the constant schedule \(it has none\)"),
    ({"weight_decay": 0.01}, "`weight_decay` 0.01 is decoupled weight decay for adam"),
    ({"optimizer": "sgd", "weight_decay": 0.01}, "sgd has none here: pass `optimizer` adam"),
    ({"optimizer": "adam", "weight_decay": -0.1}, "`weight_decay` must be a finite number >= 0"),
    ({"optimizer": "adam", "weight_decay": 2000.0}, "`weight_decay` 2000 times `lr` 0.001 must stay below 1"),
    ({"optimizer": "adam", "weight_decay": "0.1"}, "`weight_decay` must be a number"),
])
def test_bad_schedule_options_and_weight_decay_are_one_line_naming_the_flag(overrides: dict, message: str) -> None:
    from mnistlab.cli import flag_text

    with pytest.raises(MnistlabError, match=message) as raised:
        TrainConfig.for_model("mlp", **overrides)
    text = flag_text(str(raised.value))
    assert "\n" not in text
    assert ("--option" in text) if "options" in overrides else ("--weight-decay" in text)


def test_cli_parses_schedule_options_and_weight_decay(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`--option KEY=VALUE` reaches a network's schedule typed (whole numbers stay whole); a mistake is one line,
    exit 2, before anything is trained."""
    from mnistlab.cli import main
    from mnistlab.config import parse_option

    assert parse_option("mlp", "patience=3") == ("patience", 3)
    assert parse_option("mlp", "min-lr=1e-5") == ("min_lr", 1e-5)
    code = main(["train", "mlp", "--schedule", "plateau", "--option", "patience=x", "--out", str(tmp_path / "r")])
    assert code == 2 and "`options`" not in capsys.readouterr().err
    assert main(["train", "mlp", "--weight-decay", "0.1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--weight-decay 0.1 is decoupled weight decay for adam" in err and "--optimizer adam" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
