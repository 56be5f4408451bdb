"""The config system: strict typed loading, composition, overrides, validation, round trip."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from data_pipeline.configuration import (
    NONFINITE_OK,
    ConfigError,
    flatten,
    from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)
from pretrain.config import ExperimentConfig, ModelConfig
from tests.conftest import tiny_experiment


@dataclass
class Inner:
    width: int
    kind: Literal["a", "b"] = "a"
    ratio: float = 0.5
    names: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.9, 0.99)
    limit: int | None = None

    def validate(self) -> None:
        if self.width % 2:
            raise ValueError(f"width ({self.width}) must be even")


@dataclass
class Outer:
    inner: Inner
    label: str = "x"
    flags: dict[str, bool] = field(default_factory=dict)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_loads_nested_typed_values(tmp_path: Path) -> None:
    cfg = load_config(
        Outer,
        write(
            tmp_path / "c.yaml",
            "inner:\n  width: 4\n  kind: b\n  ratio: 1\n  names: [p, q]\n  pair: [0.8, 0.9]\n"
            "flags: {fast: true}\n",
        ),
    )
    assert cfg == Outer(Inner(4, "b", 1.0, ["p", "q"], (0.8, 0.9)), flags={"fast": True})
    assert isinstance(cfg.inner.ratio, float)
    assert isinstance(cfg.inner.pair, tuple)


def test_unknown_key_names_path_file_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "inner:\n  width: 4\n  widht: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert err.value.key == "inner.widht"
    assert err.value.source == str(path.resolve())
    assert "did you mean 'width'" in str(err.value)


@pytest.mark.parametrize(
    ("yaml_text", "key", "expected"),
    [
        ("inner: {width: four}", "inner.width", "must be an integer"),
        ("inner: {width: true}", "inner.width", "must be an integer"),
        ("inner: {width: 4, kind: c}", "inner.kind", "must be one of 'a' | 'b'"),
        ("inner: {width: 4, ratio: fast}", "inner.ratio", "must be a number"),
        ("inner: {width: 4, names: p}", "inner.names", "must be a list"),
        ("inner: {width: 4, names: [p, 3]}", "inner.names[1]", "must be a string"),
        ("inner: {width: 4, pair: [1]}", "inner.pair", "list of 2 items"),
        ("inner: {width: 4}\nlabel: [1]", "label", "must be a string"),
        ("inner: 3", "inner", "must be a mapping"),
        ("inner: {width: 4}\nflags: {fast: 1}", "flags.fast", "must be true or false"),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, yaml_text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(Outer, write(tmp_path / "c.yaml", yaml_text))
    assert err.value.key == key
    assert "c.yaml" in err.value.source


def test_missing_required_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required value") as err:
        load_config(Outer, write(tmp_path / "c.yaml", "label: y\n"))
    assert err.value.key == "inner.width"


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3, column 1") as err:
        load_config(Outer, write(tmp_path / "c.yaml", "inner:\n  width: [4\n"))
    assert "c.yaml" in err.value.source


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_cross_field_validation_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"width \(3\) must be even") as err:
        load_config(Outer, write(tmp_path / "c.yaml", "inner: {width: 3}\n"))
    assert err.value.key == "inner"


def test_overrides_are_type_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "inner: {width: 4}\n")
    cfg = load_config(Outer, path, ["inner.ratio=3e-4", "inner.names=[a, b]", "inner.limit=7"])
    assert cfg.inner.ratio == pytest.approx(3e-4)
    assert cfg.inner.names == ["a", "b"]
    assert cfg.inner.limit == 7
    assert load_config(Outer, path, ["inner.limit=null"]).inner.limit is None
    with pytest.raises(ConfigError, match="must be an integer") as err:
        load_config(Outer, path, ["inner.width=wide"])
    assert err.value.source == "command line override 'inner.width=wide'"
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_config(Outer, path, ["inner.depth=3"])
    assert err.value.key == "inner.depth"
    assert "command line" in err.value.source
    with pytest.raises(ConfigError, match="holds a value, not a section"):
        load_config(Outer, path, ["inner.width.sub=1"])


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", ".a=1"])
def test_malformed_overrides(text: str) -> None:
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override(text)


def test_composition_with_nested_bases(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    write(tmp_path / "presets" / "inner.yaml", "width: 8\nnames: [base]\nratio: 0.25\n")
    write(tmp_path / "common.yaml", "label: common\nflags: {a: true, b: false}\n")
    exp = write(
        tmp_path / "exp.yaml",
        "_base_: common.yaml\ninner:\n  _base_: presets/inner.yaml\n  ratio: 0.75\n"
        "flags: {b: true}\n",
    )
    cfg = load_config(Outer, exp)
    assert cfg == Outer(Inner(8, ratio=0.75, names=["base"]), "common", {"a": True, "b": True})


def test_errors_from_a_base_name_the_base_file(tmp_path: Path) -> None:
    write(tmp_path / "inner.yaml", "width: 8\nkind: z\n")
    exp = write(tmp_path / "exp.yaml", "inner:\n  _base_: inner.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, exp)
    assert err.value.key == "inner.kind"
    assert err.value.source == str((tmp_path / "inner.yaml").resolve())


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(Outer, tmp_path / "a.yaml")


def test_round_trip_is_identical(tmp_path: Path) -> None:
    cfg = tiny_experiment(tmp_path, "train.betas=[0.8, 0.95]", "model.mem_len=0")
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(ExperimentConfig, tmp_path / "resolved.yaml")
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


def test_every_preset_round_trips(repo_root: Path, tmp_path: Path) -> None:
    for preset in sorted((repo_root / "configs" / "model").glob("*.yaml")):
        cfg = load_config(ModelConfig, preset)
        save_config(cfg, tmp_path / preset.name)
        assert load_config(ModelConfig, tmp_path / preset.name) == cfg, preset.name


def test_from_dict_is_as_strict_as_files() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(Outer, {"inner": {"width": 2}, "extra": 1}, source="checkpoint")
    assert from_dict(Outer, {"inner": {"width": 2}}).inner.width == 2


def test_model_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        tiny_experiment(tmp_path, "model.d_model=30")
    with pytest.raises(ConfigError, match="needs relative or rotary"):
        tiny_experiment(tmp_path, "model.mem_len=16")
    with pytest.raises(ConfigError, match=r"exceeds model\.max_seq_len"):
        tiny_experiment(tmp_path, "train.seq_len=128")
    with pytest.raises(ConfigError, match="min_lr"):
        tiny_experiment(tmp_path, "train.min_lr=1.0")


def test_flatten_gives_dotted_params(tmp_path: Path) -> None:
    flat = flatten(tiny_experiment(tmp_path))
    assert flat["model.d_model"] == 32
    assert flat["train.betas"] == [0.9, 0.95]
    assert not any(isinstance(v, dict) for v in flat.values())


def test_yaml_1_2_scalars_words_stay_words(tmp_path: Path) -> None:
    # YAML 1.1 would read `off` as False and `3e-4` as a string; configs mean the word and number.
    path = write(tmp_path / "c.yaml", "train:\n  activation_checkpointing: off\n  lr: 3e-4\n")
    cfg = load_config(ExperimentConfig, path, _tiny_model_overrides())
    assert cfg.train.activation_checkpointing == "off"
    assert cfg.train.lr == pytest.approx(3e-4)
    cfg = load_config(
        ExperimentConfig, path, ["train.activation_checkpointing=off", *_tiny_model_overrides()]
    )
    assert cfg.train.activation_checkpointing == "off"
    with pytest.raises(ConfigError, match="must be true or false, got 'yes'"):
        load_config(ExperimentConfig, path, ["tracking.enabled=yes", *_tiny_model_overrides()])


def _tiny_model_overrides() -> list[str]:
    return [
        "model.family=decoder",
        "model.vocab_size=96",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=4",
    ]


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "inf", "nan", "-Infinity", "1e999"])
def test_non_finite_floats_are_refused_naming_key_and_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "c.yaml", f"inner: {{width: 4, ratio: {text}}}\n")
    with pytest.raises(ConfigError, match="must be a finite number") as err:
        load_config(Outer, path)
    assert err.value.key == "inner.ratio"
    assert err.value.source == str(path.resolve())


def test_non_finite_floats_in_overrides_and_lists_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "inner: {width: 4}\n")
    with pytest.raises(ConfigError, match="must be a finite number") as err:
        load_config(Outer, path, ["inner.pair=[0.9, .nan]"])
    assert err.value.key == "inner.pair[1]"
    assert err.value.source == "command line override 'inner.pair=[0.9, .nan]'"
    with pytest.raises(ConfigError, match="must be a finite number"):
        from_dict(Outer, {"inner": {"width": 2, "ratio": math.inf}})


@dataclass
class WithLimit:
    limit: float = field(default=math.inf, metadata=NONFINITE_OK)
    rate: float = 1.0


def test_a_field_can_opt_out_of_the_finite_check(tmp_path: Path) -> None:
    cfg = load_config(WithLimit, write(tmp_path / "c.yaml", "limit: .inf\n"))
    assert cfg.limit == math.inf
    save_config(cfg, tmp_path / "resolved.yaml")  # an infinite default round-trips
    assert load_config(WithLimit, tmp_path / "resolved.yaml") == cfg
    with pytest.raises(ConfigError, match="rate: must be a finite number"):
        load_config(WithLimit, tmp_path / "c.yaml", ["rate=.inf"])


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.lr=nan", "train.lr=-.inf"])
def test_pretrain_train_refuses_a_non_finite_learning_rate(override: str) -> None:
    """Before this was checked, lr=.inf trained and committed NaN weights."""
    repo = Path(__file__).resolve().parents[1]
    experiment = "configs/experiments/shakespeare_xl.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "pretrain.cli", "train", experiment, override],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"command line override {override!r}: train.lr: must be a finite number" in lines[0]
