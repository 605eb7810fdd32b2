"""Typed configs: layering (defaults < YAML < options < key=value), sections, type/range/choice checks."""

import dataclasses

import pytest

from reasonrank_jax.config import (ConfigCheckError, OneOf, Source, Values, convert_value, option,
                                   parse_override, section, to_yaml, written_by)
from reasonrank_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = option(1e-5, min=0.0)
    schedule: str = option("cosine", choices=("cosine", "constant"))


@dataclasses.dataclass(frozen=True)
class Train:
    steps: int | None = option(min=1)
    epochs: int | None = option(min=1)
    global_batch: int = option(8, min=1)
    micro_batch: int = option(8, min=1)
    out: str | None = option(required=True)

    ONE_OF = (OneOf(("steps", "epochs")),)

    def check(self):
        if self.global_batch % self.micro_batch:
            raise ConfigCheckError("micro_batch", f"must divide global_batch ({self.global_batch})")


@dataclasses.dataclass(frozen=True)
class Job:
    train: Train = section(Train)
    optim: Optim = section(Optim)
    tags: tuple[str, ...] = option(("a",))
    verbose: bool = option(False)


def _build(yaml_mapping=None, overrides=(), path="job.yaml"):
    values = Values(Job)
    if yaml_mapping is not None:
        values.set_mapping(yaml_mapping, path)
    for text in overrides:
        key, value = parse_override(text)
        values.set(key, value, Source(None, text))
    return values.build(path if yaml_mapping is not None else None)


def test_sections_layers_and_spellings():
    config = _build({"train": {"steps": 10, "out": "run"}, "optim": {"lr": 1e-4}},
                    ["train.global-batch=16", "optim.lr=3e-4", "verbose=yes", "tags=x"])
    assert config.train == Train(steps=10, epochs=None, global_batch=16, micro_batch=8, out="run")
    assert config.optim.lr == pytest.approx(3e-4) and config.optim.schedule == "cosine"
    assert config.verbose is True and config.tags == ("x",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.verbose = False


@pytest.mark.parametrize("mapping, overrides, where, words", [
    ({"train": {"steps": "abc", "out": "o"}}, [], "job.yaml [train.steps]", "integer"),
    ({"train": {"steps": 64.5, "out": "o"}}, [], "job.yaml [train.steps]", "integer"),
    ({"train": {"steps": True, "out": "o"}}, [], "job.yaml [train.steps]", "integer"),
    ({"train": {"steps": [64], "out": "o"}}, [], "job.yaml [train.steps]", "integer"),
    ({"train": {"steps": 0, "out": "o"}}, [], "job.yaml [train.steps]", ">= 1"),
    ({"train": {"steps": 1, "out": "o"}, "optim": {"schedule": "linear"}}, [], "[optim.schedule]", "one of"),
    ({"train": {"steps": 1, "out": "o"}, "verbose": "no way"}, [], "[verbose]", "true or false"),
    ({"train": {"steps": 1, "out": "o"}, "trian": {}}, [], "[trian]", "unknown setting"),
    ({"train": {"steps": 1, "out": "o", "stepz": 1}}, [], "[train.stepz]", "unknown setting in section 'train'"),
    ({"train": 5}, [], "[train]", "section"),
    ({"train": {"out": "o"}}, [], "job.yaml", "give one of"),
    ({"train": {"steps": 1, "epochs": 1, "out": "o"}}, [], "[train.epochs]", "only one of"),
    ({"train": {"steps": 1}}, [], "job.yaml", "missing required option train.out"),
    ({"train": {"steps": 1, "out": "o", "micro_batch": 3}}, [], "[train.micro_batch]", "must divide"),
    ({"train": {"steps": 1, "out": "o"}}, ["train.steps=-1"], "[train.steps=-1]", ">= 1"),
    ({"train": {"steps": 1, "out": "o"}}, ["optim=1"], "[optim=1]", "section"),
])
def test_bad_values_name_the_file_and_key(mapping, overrides, where, words):
    with pytest.raises(InputError) as err:
        _build(mapping, overrides)
    assert where in str(err.value) and words in str(err.value)


def test_conversions():
    source = Source(None, "x")
    assert convert_value("5", int, source) == 5
    assert convert_value(5, float, source) == 5.0
    assert convert_value("off", bool, source) is False
    assert convert_value(None, int | None, source) is None
    assert convert_value("a b", tuple[str, ...], source) == ("a b",)  # never split into letters
    assert convert_value(["a", "b"], tuple[str, ...], source) == ("a", "b")
    for bad, tp in [("no", int), (1.5, int), ([1], str), (True, float), (None, int), ("2", bool)]:
        with pytest.raises(InputError):
            convert_value(bad, tp, source)


def test_override_values_are_yaml_scalars():
    assert parse_override("train.steps=5") == ("train.steps", 5)
    assert parse_override("a=no") == ("a", False)
    assert parse_override("a=[1, 2]") == ("a", "[1, 2]")
    assert parse_override("a=2026-01-01") == ("a", "2026-01-01")
    assert parse_override("a=x=y") == ("a", "x=y")


def test_resolved_yaml_round_trips_and_names_its_command():
    import yaml

    config = _build({"train": {"epochs": 2, "out": "run"}, "tags": ["p", "q"]})
    text = to_yaml(config, "train sft")
    assert written_by(text) == "train sft" and written_by("model: x\n") is None
    again = _build(yaml.safe_load(text))
    assert again == config
