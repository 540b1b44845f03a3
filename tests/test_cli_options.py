"""The stage commands' options are generated from the stage configs: one option per config key, same name,
every choice of a Literal key shown in --help, and nested groups (the data options) flattened."""

from __future__ import annotations

import types
import typing
from typing import Literal, get_args, get_origin

import pytest
import typer
from typer.testing import CliRunner

from distillkit.cli.main import app
from distillkit.config import config_sha256, keys, resolve, to_dict
from distillkit.data import DataOptions
from distillkit.pipelines.eval import EvalConfig
from distillkit.pipelines.plan import PlanConfig
from distillkit.pipelines.prune import PruneConfig
from distillkit.pipelines.score import ScoreConfig
from distillkit.pipelines.train import TrainConfig

STAGES = {"prune": PruneConfig, "score": ScoreConfig, "plan": PlanConfig, "train": TrainConfig, "eval": EvalConfig}
TAIL = {"config", "set_", "print_config", "resume", "overwrite"}  # what every stage command adds
EXTRAS = {"score": {"merge"}}  # documented options that are not config keys
WIDE = {"COLUMNS": "200"}
runner = CliRunner()


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _choices(tp) -> tuple[str, ...] | None:
    if get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
    return get_args(tp) if get_origin(tp) is Literal else None


@pytest.mark.parametrize("stage", list(STAGES))
def test_one_option_per_key_with_the_same_name(stage):
    cls, cmd = STAGES[stage], _command(stage)
    visible = [p for p in cmd.params if not p.hidden and p.name not in TAIL | EXTRAS.get(stage, set())]
    names = [p.name for p in visible]
    assert sorted(names) == sorted(keys(cls)), "one option per key and one key per option"
    assert len(names) == len(set(names))
    for p in visible:
        assert f"--{p.name.replace('_', '-')}" in p.opts, (p.name, p.opts)
    for p in cmd.params:
        if p.hidden:  # an old spelling: it still sets one config key
            assert p.name.split("__old")[0] in keys(cls), p.name


@pytest.mark.parametrize("stage", list(STAGES))
def test_literal_choices_are_listed_in_help(stage):
    r = runner.invoke(app, [stage, "--help"], env=WIDE)
    assert r.exit_code == 0, r.output
    for name, key in keys(STAGES[stage]).items():
        choices = _choices(key.type)
        if not choices:
            continue
        flag = f"--{name.replace('_', '-')} "
        row = next((ln for ln in r.output.splitlines() if ln.lstrip("│| ").startswith(flag)), None)  # its row in a panel
        assert row is not None, f"{flag} missing from {stage} --help"
        assert all(c in row for c in choices), (name, choices, row)


def test_every_stage_key_has_a_help_panel():
    for cls in STAGES.values():
        assert [k for k, key in keys(cls).items() if not key.panel] == [], cls.__name__


def test_bad_choice_exits_2_naming_the_choices():
    r = runner.invoke(app, ["train", "--plan", "p", "--teacher", "t", "--student", "s", "--out", "o", "--loss", "nope"])
    assert r.exit_code == 2
    assert r.output.startswith("error: loss must be one of") and "'nope'" in r.output
    for c in get_args(typing.get_type_hints(TrainConfig)["loss"]):
        assert repr(c) in r.output


def _score(*extra: str):
    return runner.invoke(app, ["score", "--data", "d", "--teacher", "t", "--student", "s", "--out", "o", *extra])


def test_nested_data_options_are_flat_keys_everywhere(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[score]\nmax_per_domain = 40\ntext_field = "body"\n')
    r = _score("--config", str(cfg), "--set", "val_size=3", "--seed", "7", "--print-config")
    assert r.exit_code == 0, r.output
    for line in ("max_per_domain = 40", 'text_field = "body"', "val_size = 3", "seed = 7"):
        assert line in r.output, line
    assert "data_opts" not in r.output
    r = _score("--set", "val_fraction=1.5")
    assert r.exit_code == 2 and "val_fraction must be in (0, 1)" in r.output


def test_renamed_options_and_their_old_spellings(monkeypatch):
    monkeypatch.setattr(EvalConfig, "validate", lambda self: [])  # the models need not exist to print the config
    r = runner.invoke(app, ["eval", "--model", "a", "--model", "b,c", "--out", "o", "--seeds", "1,2", "--max-new-tokens", "3",
                            "--tasks", "x", "--tasks", "y,z", "--print-config"])
    assert r.exit_code == 0, r.output
    for line in ('models = ["a", "b", "c"]', "gen_seeds = [1, 2]", "gen_max_new_tokens = 3", 'tasks = ["x", "y", "z"]'):
        assert line in r.output, line
    r = runner.invoke(app, ["eval", "--model", "a", "--models", "b", "--out", "o"])
    assert r.exit_code == 2 and "use --models only" in r.output
    r = runner.invoke(app, ["train", "--plan", "p", "--teacher", "t", "--student", "s", "--out", "o", "--no-ddk-smoothing",
                            "--print-config"])
    assert r.exit_code == 0 and "ddk_smoothing = false" in r.output
    assert runner.invoke(app, ["plan", "--scores", "s", "--out", "o", "--no-smoothing"]).exit_code == 2


def test_score_and_eval_configs_stay_flat_and_hash_as_before():
    score = resolve(ScoreConfig, options={"data": "d.jsonl", "teacher": "t", "student": "s", "out": "o", "max_per_domain": 40,
                                          "val_size": 3, "seed": 7})
    d = to_dict(score)
    assert list(d) == list(keys(ScoreConfig)) and "data_opts" not in d
    assert (d["max_per_domain"], d["val_size"], d["seed"]) == (40, 3, 7)
    # The flat dict as it was before the group (one key per field, same values): the recorded config_sha256 holds.
    flat = {k: getattr(score.data_opts if k in keys(DataOptions) else score, k) for k in keys(ScoreConfig)}
    assert d == {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}
    assert config_sha256(d) == config_sha256(dict(sorted(d.items())))
    assert set(keys(DataOptions)) <= set(keys(EvalConfig))


def test_data_options_from_a_score_manifest_config():
    recorded = {"data": "x.jsonl", "teacher": "t", "max_per_domain": 5, "seed": 2, "val_size": 9}
    opts = DataOptions.from_config(recorded)
    assert (opts.max_per_domain, opts.seed, opts.val_size) == (5, 2, 9)
    assert opts.text_field == "text" and opts.val_fraction == 0.1  # keys older artifacts lack: the defaults they used
    spec = opts.spec("x.jsonl")
    assert spec.path == "x.jsonl" and spec.max_per_domain == 5
