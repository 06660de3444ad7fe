"""Recipe schema: overrides, unknown keys with suggestions, type errors, run-folder guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmkit.config import dump_recipe, load_recipe, recipe_from_dict
from slmkit.errors import SlmError
from slmkit.pipeline.rundir import open_run_dir

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def test_quickstart_loads_and_overrides_apply():
    recipe = load_recipe(QUICKSTART, ["train.max_steps=30", "model.n_layers=2", "data.sources.docs.weight=0.5"])
    assert recipe.train.max_steps == 30
    assert recipe.model.overrides["n_layers"] == 2
    assert recipe.data.sources[1].weight == 0.5
    assert recipe.tokenizer.vocab_size == 8192


def test_resolved_recipe_round_trips():
    import yaml

    recipe = load_recipe(QUICKSTART, ["model.n_layers=3"])
    again = recipe_from_dict(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.vocab_sise=8000", "'tokenizer.vocab_size'"),
        ("train.max_step=3", "'train.max_steps'"),
        ("model.n_layer=2", "'model.n_layers'"),
        ("trian.seed=3", "'train'"),
    ],
)
def test_unknown_key_suggests_closest(override, expected):
    with pytest.raises(SlmError, match="unknown recipe key") as info:
        load_recipe(QUICKSTART, [override])
    assert override.split("=")[0].split(".")[0] in str(info.value)
    assert expected in str(info.value)


def test_exponent_without_dot_is_a_float():
    assert load_recipe(QUICKSTART, ["train.lr=3e-4"]).train.lr == 3e-4


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(SlmError) as info:
        load_recipe(QUICKSTART, ["train.max_steps=abc"])
    msg = str(info.value)
    assert "train.max_steps" in msg and "'abc'" in msg and "int" in msg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.sources.0.weight=0", "weight must be > 0"),
        ("tokenizer.vocab_size=100", "too small"),
        ("task=finetune", "task"),
        ("stages=[tokenizer,trian]", "did you mean 'train'"),
    ],
)
def test_invalid_values_rejected(override, fragment):
    with pytest.raises(SlmError, match=fragment):
        load_recipe(QUICKSTART, [override])


def test_missing_and_malformed_recipe(tmp_path):
    with pytest.raises(SlmError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: [1, 2\n")
    with pytest.raises(SlmError, match=r"bad.yaml:\d+: malformed YAML"):
        load_recipe(bad)


def test_run_folder_refuses_different_recipe_without_force(tmp_path):
    out = tmp_path / "run"
    open_run_dir(out, load_recipe(QUICKSTART))
    open_run_dir(out, load_recipe(QUICKSTART, ["model.n_layers=5"]))  # nothing produced yet: free
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(SlmError, match="different recipe"):
        open_run_dir(out, load_recipe(QUICKSTART))
    open_run_dir(out, load_recipe(QUICKSTART), force=True)
    open_run_dir(out, load_recipe(QUICKSTART, ["train.max_steps=5"]))  # mutable key: fine
    with pytest.raises(SlmError, match="different recipe.*model.n_layers"):
        open_run_dir(out, load_recipe(QUICKSTART, ["model.n_layers=1"]))
    open_run_dir(out, load_recipe(QUICKSTART, ["model.n_layers=1"]), force=True)
    assert "n_layers: 1" in (out / "recipe.yaml").read_text()
