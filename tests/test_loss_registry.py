"""`distillkit.losses.registry`: one registration per divergence, from which train's --loss choices, the options
that feed each divergence's parameters and their checks come; importable without torch."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest

from distillkit.config import keys
from distillkit.losses.registry import (
    DIVERGENCES,
    REGISTRY,
    Divergence,
    choices_help,
    config_params,
    option_problems,
    resolve_params,
)
from distillkit.pipelines.train_config import TrainConfig


def test_registry_and_its_users_import_without_torch():
    code = ("import sys, distillkit.losses, distillkit.losses.registry, distillkit.pipelines.train_config; "
            "print(','.join(m for m in ('torch', 'numpy', 'pyarrow', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported with the registry: {out}"


def test_the_package_hands_out_the_objective_function_whichever_import_loads_its_module_first():
    code = ("import types, distillkit.losses.objective; from distillkit.losses import LossSpec, objective; "
            "print(isinstance(objective, types.FunctionType), LossSpec.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "distillkit.losses.objective"]


def test_every_registration_has_its_function():
    from distillkit.losses import divergences

    for d in REGISTRY:
        assert callable(getattr(divergences, d.rows)), d.name
    assert divergences._ROWS.keys() == set(DIVERGENCES)


def test_train_loss_choices_and_help_are_the_registry():
    key = keys(TrainConfig)["loss"]
    assert get_args(key.type) == get_args(Divergence) == DIVERGENCES == ("fkl", "rkl", "jsd", "skl", "srkl", "tvd", "akl", "taid", "jeffreys")
    assert choices_help() == "fkl, rkl, jsd (jsd_beta), skl / srkl (skew_alpha), tvd, akl (akl_mu), taid, jeffreys"
    assert key.help == f"Divergence D: {choices_help()}."


def test_each_option_is_a_train_key_whose_default_is_the_parameters():
    fields = keys(TrainConfig)
    for d in REGISTRY:
        for p in d.params:
            if p.option is not None:
                assert fields[p.option].default == p.default, (d.name, p.option)
            else:
                assert p.default is None, f"{d.name}.{p.name}: a parameter without an option is given per step"


@pytest.mark.parametrize("kind, expected", [
    ("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.3}), ("skl", {"alpha": 0.2}), ("srkl", {"alpha": 0.2}), ("tvd", {}),
    ("akl", {"mu": 0.7}), ("taid", {}),  # TAID's t comes from its schedule, per step
])
def test_config_params_hand_each_divergence_its_own_options(kind, expected):
    cfg = TrainConfig(loss=kind, jsd_beta=0.3, skew_alpha=0.2, akl_mu=0.7)
    assert config_params(kind, cfg) == expected
    if kind != "taid":
        assert resolve_params(kind, expected) == expected  # what the loss functions accept as is


def test_option_checks_name_every_option_out_of_range():
    cfg = TrainConfig(jsd_beta=1.5, skew_alpha=-0.1, akl_mu=0.5)
    assert option_problems(cfg) == ["jsd_beta must be in [0, 1], got 1.5", "skew_alpha must be in [0, 1], got -0.1"]
    problems = TrainConfig(plan="p", teacher="t", student="s", out="o", akl_mu=2.0).validate()
    assert problems == ["akl_mu must be in [0, 1], got 2.0"]


def test_resolve_params_messages_name_what_exists():
    with pytest.raises(ValueError, match="choose one of fkl, rkl, jsd, skl, srkl, tvd, akl, taid"):
        resolve_params("kl", {})
    with pytest.raises(ValueError, match=r"got unknown parameter\(s\) \['beta'\]; it accepts alpha"):
        resolve_params("skl", {"beta": 0.5})
    with pytest.raises(ValueError, match="needs t= \\(the interpolation t in \\[0, 1\\], e.g. TaidSchedule.t\\)"):
        resolve_params("taid", {})
    with pytest.raises(ValueError, match=r"mu=1.5 is outside \[0, 1\]"):
        resolve_params("akl", {"mu": 1.5})
    assert resolve_params("jsd", {}) == {"beta": 0.5} and resolve_params("taid", {"t": 1}) == {"t": 1.0}
