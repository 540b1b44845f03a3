from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from distillkit.config import field_help, group, keys, opt, pick, resolve, to_dict, to_toml
from distillkit.errors import ConfigError


@dataclass(frozen=True)
class Cfg:
    name: str = opt("base", "a name")
    steps: int = opt(10, "steps")
    lr: float = opt(1e-3, "learning rate")
    loss: Literal["fkl", "rkl"] = opt("fkl", "divergence")
    flag: bool = opt(False, "a flag")
    domains: tuple[str, ...] = opt((), "domains")
    limit: int | None = opt(None, "optional limit")

    def validate(self):
        return ["steps must be >= 1"] if self.steps < 1 else []


def test_defaults():
    assert resolve(Cfg) == Cfg()


def test_precedence_defaults_file_set_options(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('name = "file"\nsteps = 20\nlr = 0.5\nloss = "rkl"\n')
    cfg = resolve(Cfg, f, ["steps=30", "lr=0.25"], {"lr": 0.125, "name": None})
    assert cfg.name == "file"  # file beats default; None option = not given
    assert cfg.steps == 30  # --set beats file
    assert cfg.lr == 0.125  # option beats --set
    assert cfg.loss == "rkl"


def test_yaml_and_section(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 7\n  flag: true\n  domains: [a, b]\n")
    cfg = resolve(Cfg, f, section="train")
    assert (cfg.steps, cfg.flag, cfg.domains) == (7, True, ("a", "b"))


def test_set_coercion():
    cfg = resolve(Cfg, None, ["flag=yes", "domains=a,b,c", "limit=none", "loss=rkl"])
    assert cfg.flag is True and cfg.domains == ("a", "b", "c") and cfg.limit is None and cfg.loss == "rkl"
    assert resolve(Cfg, None, ["limit=5"]).limit == 5


def test_unknown_keys_suggest_close_matches_and_all_problems_reported(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("stpes = 3\n")
    with pytest.raises(ConfigError) as e:
        resolve(Cfg, f, ["lossy=fkl", "steps=abc"])
    msg = str(e.value)
    assert "unknown key 'stpes'" in msg and "did you mean steps" in msg
    assert "unknown key 'lossy'" in msg and "loss" in msg
    assert "steps must be an integer" in msg
    assert "\n" not in msg


def test_literal_and_validate_errors():
    with pytest.raises(ConfigError, match="loss must be one of 'fkl', 'rkl'"):
        resolve(Cfg, None, ["loss=jsd"])
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        resolve(Cfg, None, ["steps=0"])
    with pytest.raises(ConfigError, match="--set expects key=value"):
        resolve(Cfg, None, ["steps"])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve(Cfg, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        resolve(Cfg, bad)


def test_print_config_round_trips(tmp_path):
    cfg = resolve(Cfg, None, ["steps=42", "domains=x,y"])
    text = to_toml(cfg)
    assert "# learning rate" in text
    f = tmp_path / "round.toml"
    f.write_text(text)
    assert resolve(Cfg, f) == cfg


@dataclass(frozen=True)
class Inner:
    size: int = opt(5, "inner size", panel="data")
    tag: str | None = opt(None, "inner tag", panel="data")

    def validate(self):
        return ["size must be >= 0"] if self.size < 0 else []


@dataclass(frozen=True)
class Outer:
    name: str = opt("o", "outer name")
    inner: Inner = group(Inner)
    steps: int = opt(1, "outer steps")


def test_nested_group_keys_are_flat(tmp_path):
    assert list(keys(Outer)) == ["name", "size", "tag", "steps"]
    assert field_help(Outer)["size"] == "inner size" and keys(Outer)["size"].panel == "data"
    f = tmp_path / "c.toml"
    f.write_text("[outer]\nsize = 7\n")
    cfg = resolve(Outer, f, ["tag=x"], {"steps": 3}, section="outer")
    assert cfg == Outer(steps=3, inner=Inner(size=7, tag="x"))
    assert to_dict(cfg) == {"name": "o", "size": 7, "tag": "x", "steps": 3}  # flat, in declaration order
    f.write_text(to_toml(cfg))
    assert resolve(Outer, f) == cfg
    with pytest.raises(ConfigError, match="size must be >= 0"):  # the group's validate() runs too
        resolve(Outer, None, ["size=-1"])
    with pytest.raises(ConfigError, match="unknown key 'inner'"):  # the group's field name is not a key
        resolve(Outer, None, ["inner=3"])


def test_group_key_clash_is_an_error():
    @dataclass(frozen=True)
    class Clash:
        size: int = opt(1, "the parent's own size")
        inner: Inner = group(Inner)

    with pytest.raises(TypeError, match="'size' of Clash is declared twice"):
        keys(Clash)


def test_pick_takes_the_declared_keys_and_defaults_the_rest():
    assert pick(Inner, {"size": "9", "other": 1}) == Inner(size=9)
    assert pick(Outer, {"tag": "t"}) == Outer(inner=Inner(tag="t"))
    with pytest.raises(ConfigError, match="size must be an integer"):
        pick(Inner, {"size": "many"})


def test_identity_is_declared_on_the_option_and_a_new_defaulted_key_changes_nothing():
    """opt(identity=...): True counts always, False never, "non-default" only when set, a callable when it holds;
    adding an option with identity="non-default" leaves every existing artifact's identity as it was."""
    from dataclasses import dataclass

    from distillkit.config import identity, opt

    @dataclass(frozen=True)
    class Old:
        out: str = opt("o", "where", identity=False)
        lr: float = opt(1e-4, "lr")
        fast: bool = opt(False, "speed only", identity=False)

    @dataclass(frozen=True)
    class New(Old):
        pack: bool = opt(False, "new option", identity="non-default")
        mode: str = opt("a", "counts when fast", identity=lambda c: c.fast)

    assert identity(Old()) == {"lr": 1e-4} == identity(New())  # the new keys at their defaults: same identity
    assert identity(New(pack=True)) == {"lr": 1e-4, "pack": True}
    assert identity(New(fast=True)) == {"lr": 1e-4, "mode": "a"}
    with pytest.raises(TypeError, match="identity must be"):
        opt(1, "x", identity="sometimes")


def test_stage_identities_keep_the_keys_of_artifacts_made_before_their_options():
    """What the hand-kept skip lists used to drop is dropped by the options themselves."""
    from distillkit.config import identity
    from distillkit.pipelines.eval import EvalConfig
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.score import ScoreConfig
    from distillkit.pipelines.train_config import TrainConfig

    score = identity(ScoreConfig(data="d", teacher="t", student="s", out="o"))
    assert not {"out", "engine", "batch_tokens", "topk_format", "teacher_store", "sample_count", "responses", "dev_size",
                "chat_template"} & set(score)
    assert {"topk_format"} <= set(identity(ScoreConfig(data="d", teacher="t", student="s", out="o", top_k=8)))
    train = identity(TrainConfig(plan="p", teacher="t", student="s", out="o"))
    assert not {"out", "save_every", "early_check", "on_policy", "gen_engine", "pack", "ddk_factor"} & set(train)
    on = identity(TrainConfig(plan="p", teacher="t", student="s", out="o", on_policy=0.5))
    assert {"on_policy", "gen_max_new_tokens"} <= set(on) and "gen_engine" not in on
    plan = identity(PlanConfig(scores="s", out="o"))
    assert not {"out", "pools", "ddk_factor", "ddk_tau"} & set(plan)
    assert {"ddk_factor", "ddk_tau"} <= set(identity(PlanConfig(scores="s", out="o", ddk_factor="log-ratio")))
    ev = identity(EvalConfig(models=("a",), out="o", data="d"))
    assert not {"out", "plot", "gen_batch_size", "device", "dev_size", "chat_template"} & set(ev)
