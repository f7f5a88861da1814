"""The core shared by every method: config loading, the registry, atomic outputs and the error hierarchy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from concept_erase.core import errors
from concept_erase.core.config import config_to_dict, dump_config, load_config, parse_overrides, read_yaml
from concept_erase.core.errors import (
    ConfigError,
    ConfigParseError,
    OutputExistsError,
    RegistryError,
    UnknownConfigKeyError,
    UnknownNameError,
)
from concept_erase.core.io import RunRecorder, atomic_output_dir, check_output_dir
from concept_erase.core.registry import Registry, get_method, get_step, list_methods, register_step


@dataclass
class Inner:
    betas: tuple[float, float] = (0.9, 0.999)
    name: str = "adam"


@dataclass
class Outer:
    steps: int = 10
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


@dataclass
class NeedsKey:
    path: str
    ratio: float = 0.5


# ---------------------------------------------------------------------------------------------------- config


def test_yaml_plus_dotted_overrides_build_a_typed_nested_config(tmp_path):
    source = tmp_path / "c.yaml"
    source.write_text("steps: 3\nlr: 1\ninner: {name: sgd}\n")
    cfg = load_config(Outer, source, ["inner.betas=[0.5, 0.6]", "limit=7", "tags=[x, y]", "mode=b"])
    assert cfg == Outer(steps=3, lr=1.0, mode="b", limit=7, tags=["x", "y"], inner=Inner((0.5, 0.6), "sgd"))
    assert isinstance(cfg.lr, float) and isinstance(cfg.inner.betas, tuple)
    assert load_config(Outer, {"limit": None}).limit is None


def test_unknown_key_names_the_key_and_the_valid_keys():
    with pytest.raises(UnknownConfigKeyError) as info:
        load_config(Outer, {"stepz": 3})
    message = str(info.value)
    assert "'stepz'" in message and "valid keys: inner, limit, lr, mode, steps, tags" in message
    with pytest.raises(UnknownConfigKeyError, match=r"'inner\.nme'.*valid keys: betas, name"):
        load_config(Outer, {}, ["inner.nme=x"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"steps": "ten"}, r"steps: expected int, got str 'ten'"),
        ({"steps": True}, r"steps: expected int, got bool"),
        ({"lr": "fast"}, r"lr: expected float"),
        ({"mode": "c"}, r"mode: invalid value 'c'; accepted values: 'a', 'b'"),
        ({"tags": "x"}, r"tags: expected a list"),
        ({"inner": {"betas": [1.0]}}, r"inner\.betas: expected 2 values, got 1"),
        ({"inner": 3}, r"inner: expected a mapping for Inner"),
    ],
)
def test_wrong_types_name_the_key_the_expected_type_and_the_value(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(Outer, data)


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="missing required key.*path"):
        load_config(NeedsKey, {"ratio": 0.1})


def test_read_yaml_reports_the_line_of_a_syntax_error_and_rejects_non_mappings(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigParseError, match=r"bad\.yaml is not valid YAML at line \d+"):
        read_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigParseError, match="must contain a mapping"):
        read_yaml(listing)
    with pytest.raises(ConfigParseError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("steps: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigParseError):
        read_yaml(evil)


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "a.c=x y", "d=[1, 2]", "e=", "--f=true"]) == {
        "a": {"b": 1, "c": "x y"},
        "d": [1, 2],
        "e": "",
        "f": True,
    }
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="conflicts"):
        parse_overrides(["a=1", "a.b=2"])


def test_dump_config_round_trips(tmp_path):
    cfg = Outer(steps=5, tags=["q"], inner=Inner((0.1, 0.2), "x"))
    dump_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["inner"]["betas"] == [0.1, 0.2]
    assert load_config(Outer, tmp_path / "c.yaml") == cfg
    assert config_to_dict(cfg)["inner"] == {"betas": [0.1, 0.2], "name": "x"}


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_rejects_bad_and_duplicate_names_and_non_dataclass_configs():
    reg = Registry("widget")
    reg.register("good_name", Inner, tags=("x",))(lambda: None)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("good_name")
    for bad in ("Bad", "1abc", "has-dash", ""):
        with pytest.raises(RegistryError, match="invalid widget name"):
            reg.register(bad)
    with pytest.raises(RegistryError, match="must be a dataclass"):
        reg.register("other", dict)
    assert reg.names("x") == ["good_name"] and reg.names("y") == []


def test_registry_lookup_of_an_unknown_name_lists_the_registered_ones():
    reg = Registry("widget")

    @reg.register("alpha", description="first")
    def alpha():
        pass

    assert reg.get("alpha").target is alpha and reg.get("alpha").description == "first"
    with pytest.raises(UnknownNameError, match=r"unknown widget 'beta'; registered widgets: alpha") as info:
        reg.get("beta")
    assert str(info.value).startswith("unknown")  # not quoted like a KeyError
    reg.unregister("alpha")
    assert "alpha" not in reg


def test_entry_make_config_validates_and_config_less_entries_take_nothing():
    reg = Registry("widget")
    reg.register("with_cfg", Inner)(object)
    reg.register("no_cfg")(object)
    assert reg.get("with_cfg").make_config({"name": "z"}, ["betas=[1, 2]"]) == Inner((1.0, 2.0), "z")
    with pytest.raises(UnknownConfigKeyError):
        reg.get("with_cfg").make_config({"nope": 1})
    assert reg.get("no_cfg").make_config() is None
    with pytest.raises(RegistryError, match="takes no configuration"):
        reg.get("no_cfg").make_config({"a": 1})


def test_plugins_register_the_classifier_methods_and_pipeline_steps():
    assert "finetune" in list_methods("classifier")
    assert "finetune" not in list_methods("diffusion")
    assert get_method("finetune").config_cls.__name__ == "FinetuneConfig"
    for step in ("train_classifier", "saliency_mask", "unlearn", "evaluate_classifier", "report"):
        assert get_step(step).config_cls is not None
    with pytest.raises(RegistryError, match="already registered"):
        register_step("train_classifier")


# ---------------------------------------------------------------------------------------------------- io


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("1")
    with pytest.raises(OutputExistsError, match="not empty; pass --overwrite"):
        check_output_dir(tmp_path / "full")
    check_output_dir(tmp_path / "full", overwrite=True)
    (tmp_path / "file").write_text("1")
    with pytest.raises(OutputExistsError, match="not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)


def test_atomic_output_dir_renames_on_success_and_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp != out and not out.exists()
        (tmp / "a.txt").write_text("done")
    assert (out / "a.txt").read_text() == "done" and _siblings(out) == []

    failed = tmp_path / "failed"
    with pytest.raises(ZeroDivisionError):
        with atomic_output_dir(failed) as tmp:
            (tmp / "half.txt").write_text("half")
            raise ZeroDivisionError
    assert not failed.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    nested = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(KeyError):
        with atomic_output_dir(nested):
            raise KeyError("boom")
    assert not (tmp_path / "new").exists()  # parents created for the failed run are removed too


def test_atomic_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and _siblings(out) == []


def test_run_recorder_records_config_seed_versions_time_and_memory(tmp_path):
    with RunRecorder("unit", Inner(), seed=3, extra_field="x") as recorder:
        sum(range(1000))
    record = json.loads(recorder.write(tmp_path).read_text())
    assert record["kind"] == "unit" and record["seed"] == 3 and record["extra_field"] == "x"
    assert record["config"] == {"betas": [0.9, 0.999], "name": "adam"}
    assert {"python", "torch", "safetensors"} <= set(record["versions"])
    assert record["wall_time_s"] >= 0 and record["peak_memory"]["cpu_peak_rss"] > 10_000_000


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (errors.ConfigError, ValueError),
        (errors.UnknownConfigKeyError, KeyError),
        (errors.ConfigParseError, ValueError),
        (errors.RegistryError, ValueError),
        (errors.UnknownNameError, KeyError),
        (errors.MaskError, ValueError),
        (errors.EmptyDataError, ValueError),
        (errors.CheckpointError, ValueError),
        (errors.CheckpointNotFoundError, FileNotFoundError),
        (errors.OutputExistsError, FileExistsError),
        (errors.PipelineError, RuntimeError),
    ],
)
def test_errors_derive_from_the_base_class_and_the_matching_builtin(cls, builtin):
    exc = cls("one line")
    assert isinstance(exc, errors.ConceptEraseError) and isinstance(exc, builtin)
    assert str(exc) == "one line"


def test_not_fitted_error_is_sklearns():
    from sklearn.exceptions import NotFittedError

    assert issubclass(errors.NotFittedError, NotFittedError)


def test_exponent_without_a_dot_is_a_float():
    """YAML 1.1 reads ``1e-3`` as a string; a float field takes it as the number a user means."""
    assert load_config(Outer, {}, ["lr=1e-3"]).lr == 1e-3
    assert load_config(Outer, {"lr": "2E+2"}).lr == 200.0
