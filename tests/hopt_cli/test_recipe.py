"""hopt_cli.recipe: validation of a whole recipe, its resolved form, and reading it from a file."""
from __future__ import annotations

import copy
import math

import pytest
import yaml

from hopt_cli.errors import HoptError, RecipeError
from hopt_cli.policies.pbt import Pbt
from hopt_cli.policies.romul import Romul
from hopt_cli.policies import policy_settings
from hopt_cli.recipe import FORMAT, PolicySpec, Recipe, load_recipe
from hopt_cli.store import Store
from tests.commands import hopt, invoke

SPACE = {
    "lr": {"type": "log", "low": 1.0e-4, "high": 1.0, "init": [1.0e-3, 1.0e-1]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.8},
    "weight_decay": {"type": "log", "low": 1.0e-6, "high": 1.0e-2},
    "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
    "augment": {"type": "choice", "values": ["none", "shift", "shift+noise"]},
}

FULL = {
    "name": "digits-cnn",
    "seed": 7,
    "objective": {"metric": "val_acc", "mode": "max"},
    "population": 8,
    "intervals": 20,
    "steps": 100,
    "policy": {"name": "romul", "quantile": 0.3, "sigma0": 0.2},
    "worker": "workers.digits:train_interval",
    "space": SPACE,
    "lease": {"timeout": 600, "heartbeat": 60},
    "keep_best": 5,
    "max_failures": 4,
}

MINIMAL = {
    "name": "toy",
    "objective": {"metric": "score", "mode": "max"},
    "population": 4,
    "intervals": 10,
    "worker": "workers.toys:pbt_quadratic",
    "space": {"h0": {"type": "float", "low": 0.0, "high": 1.0}},
}


def with_changes(base: dict, **changes) -> dict:
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


DROP = object()


# --- valid recipes ---------------------------------------------------------------------------------

def test_full_recipe_round_trips_through_its_resolved_form():
    recipe = Recipe.from_dict(copy.deepcopy(FULL))
    data = recipe.to_dict()
    again = Recipe.from_dict(copy.deepcopy(data))
    assert again.to_dict() == data
    assert again == recipe
    # and through YAML, as experiment.yaml stores it
    from_yaml = Recipe.from_dict(yaml.safe_load(yaml.safe_dump(data, sort_keys=False)))
    assert from_yaml.to_dict() == data


def test_full_recipe_resolved_values():
    recipe = Recipe.from_dict(copy.deepcopy(FULL))
    assert recipe.name == "digits-cnn"
    assert (recipe.seed, recipe.population, recipe.intervals, recipe.steps) == (7, 8, 20, 100)
    assert recipe.objective.metric == "val_acc" and recipe.objective.maximize
    assert recipe.trainable == "workers.digits:train_interval" and recipe.command is None
    assert recipe.space.names == ("lr", "dropout", "weight_decay", "batch_size", "augment")
    assert (recipe.lease.timeout, recipe.lease.heartbeat) == (600.0, 60.0)
    assert (recipe.keep_best, recipe.max_failures) == (5, 4)
    assert recipe.policy.name == "romul"
    assert recipe.policy.settings["quantile"] == 0.3 and recipe.policy.settings["sigma0"] == 0.2
    data = recipe.to_dict()
    assert data["format"] == FORMAT
    assert data["policy"]["name"] == "romul"
    # every setting is resolved, defaults included
    assert data["policy"]["quantile"] == 0.3 and data["policy"]["ready"] == 2 and data["policy"]["explorers"] == 0.25
    assert "command" not in data
    assert data["space"]["lr"]["init"] == [1.0e-3, 1.0e-1]


def test_defaults():
    recipe = Recipe.from_dict(copy.deepcopy(MINIMAL))
    assert recipe.seed == 0
    assert recipe.steps == 1
    assert recipe.lease.timeout == 300 and recipe.lease.heartbeat == 30
    assert recipe.keep_best == 3
    assert recipe.max_failures == 3
    assert recipe.policy == PolicySpec("romul", policy_settings("romul", Romul()))
    data = recipe.to_dict()
    assert data["seed"] == 0 and data["steps"] == 1
    assert data["objective"] == {"metric": "score", "mode": "max"}
    assert data["lease"] == {"timeout": 300.0, "heartbeat": 30.0}
    assert data["keep_best"] == 3 and data["max_failures"] == 3
    assert data["policy"]["name"] == "romul"
    assert Recipe.from_dict(data).to_dict() == data


def test_policy_as_a_name_and_minimize():
    recipe = Recipe.from_dict(with_changes(MINIMAL, policy="pbt", objective={"metric": "loss", "mode": "min"}))
    assert recipe.policy == PolicySpec("pbt", policy_settings("pbt", Pbt()))
    assert recipe.objective.mode == "min" and not recipe.objective.maximize
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()
    for name in ("de", "random"):
        assert Recipe.from_dict(with_changes(MINIMAL, policy={"name": name})).policy.name == name


def test_command_with_known_placeholders_validates():
    command = "python train.py --lr {lr} --resume {parent} --out {out} --steps {steps} --seed {seed}"
    space = {"lr": {"type": "log", "low": 1e-4, "high": 1.0}}
    recipe = Recipe.from_dict(with_changes(MINIMAL, worker=DROP, command=command, space=space))
    assert recipe.command == command and recipe.trainable is None
    data = recipe.to_dict()
    assert data["command"] == command and "worker" not in data
    assert Recipe.from_dict(data).to_dict() == data
    # every context placeholder, a format spec and literal braces
    command = "run {member} {interval} {lr:.3g} {parent} {{literal}} > {out}/log"
    assert Recipe.from_dict(with_changes(MINIMAL, worker=DROP, command=command, space=space)).command == command


def test_lease_accepts_integers_and_half_timeout_heartbeat():
    recipe = Recipe.from_dict(with_changes(MINIMAL, lease={"timeout": 60, "heartbeat": 30}))
    assert (recipe.lease.timeout, recipe.lease.heartbeat) == (60.0, 30.0)


# --- invalid recipes -------------------------------------------------------------------------------

BAD = [
    ("unknown top key", {"colour": "blue"}, "colour"),
    ("population 1", {"population": 1}, "population"),
    ("population as a string", {"population": "8"}, "population"),
    ("population as a bool", {"population": True}, "population"),
    ("population missing", {"population": DROP}, "population"),
    ("intervals 0", {"intervals": 0}, "intervals"),
    ("intervals 2.5", {"intervals": 2.5}, "intervals"),
    ("steps 0", {"steps": 0}, "steps"),
    ("seed negative", {"seed": -1}, "seed"),
    ("missing space", {"space": DROP}, "space"),
    ("bad space entry", {"space": {"h0": {"type": "float", "low": 1, "high": 0}}}, "space.h0"),
    ("both worker and command", {"command": "python train.py --out {out}"}, "worker"),
    ("neither worker nor command", {"worker": DROP}, "worker"),
    ("worker without ':'", {"worker": "workers.toys.pbt_quadratic"}, "worker"),
    ("worker not a string", {"worker": 3}, "worker"),
    ("command with unknown placeholder", {"worker": DROP, "command": "train --x {foo} --out {out}"}, "command"),
    ("command with bad brace", {"worker": DROP, "command": "train --x {h0"}, "command"),
    ("empty command", {"worker": DROP, "command": "   "}, "command"),
    ("command that never resumes", {"worker": DROP, "command": "train --h0 {h0} --out {out}"}, "command"),
    ("command that writes nowhere", {"worker": DROP, "command": "train --h0 {h0} --resume {parent}"}, "command"),
    ("bad objective mode", {"objective": {"metric": "acc", "mode": "maximize"}}, "objective.mode"),
    ("empty objective metric", {"objective": {"metric": "", "mode": "max"}}, "objective.metric"),
    ("objective missing", {"objective": DROP}, "objective"),
    ("objective without its metric", {"objective": {"mode": "min"}}, "objective.metric"),
    ("unknown objective key", {"objective": {"metric": "acc", "goal": "max"}}, "objective.goal"),
    ("objective not a mapping", {"objective": "acc"}, "objective"),
    ("heartbeat above half the timeout", {"lease": {"timeout": 100, "heartbeat": 51}}, "lease.heartbeat"),
    ("lease timeout 0", {"lease": {"timeout": 0}}, "lease.timeout"),
    ("lease timeout a string", {"lease": {"timeout": "300"}}, "lease.timeout"),
    ("lease heartbeat negative", {"lease": {"heartbeat": -1}}, "lease.heartbeat"),
    ("lease timeout NaN", {"lease": {"timeout": math.nan}}, "lease.timeout"),
    ("lease heartbeat NaN", {"lease": {"heartbeat": math.nan}}, "lease.heartbeat"),
    ("unknown lease key", {"lease": {"timeout": 300, "grace": 10}}, "lease.grace"),
    ("name with '/'", {"name": "runs/exp1"}, "name"),
    ("name missing", {"name": DROP}, "name"),
    ("name empty", {"name": ""}, "name"),
    ("name not a string", {"name": 12}, "name"),
    ("format 3 (a newer hopt)", {"format": 3}, "format"),
    ("unknown policy", {"policy": {"name": "bayes"}}, "policy.name"),
    ("policy name not a string", {"policy": {"name": ["romul"]}}, "policy.name"),
    ("unknown policy setting", {"policy": {"name": "romul", "temperature": 1}}, "policy.temperature"),
    ("policy setting out of range", {"policy": {"name": "pbt", "quantile": 2}}, "policy.quantile"),
    ("policy not a mapping", {"policy": 3}, "policy"),
    ("keep_best 0", {"keep_best": 0}, "keep_best"),
    ("max_failures 0", {"max_failures": 0}, "max_failures"),
    ("stop empty", {"stop": {}}, "stop"),
    ("stop not a mapping", {"stop": 12}, "stop"),
    ("unknown stop key", {"stop": {"hours": 1, "minutes": 5}}, "stop.minutes"),
    ("stop hours 0", {"stop": {"hours": 0}}, "stop.hours"),
    ("stop hours negative", {"stop": {"hours": -2}}, "stop.hours"),
    ("stop hours a string", {"stop": {"hours": "12"}}, "stop.hours"),
    ("stop hours infinite", {"stop": {"hours": math.inf}}, "stop.hours"),
    ("stop target without a metric", {"stop": {"at_least": 0.9}}, "stop.metric"),
    ("stop metric without a target", {"stop": {"metric": "acc"}}, "stop"),
    ("stop metric with both targets", {"stop": {"metric": "acc", "at_least": 0.9, "at_most": 0.95}}, "stop"),
    ("stop metric not a string", {"stop": {"metric": 3, "at_least": 0.9}}, "stop.metric"),
    ("stop target a boolean", {"stop": {"metric": "acc", "at_least": True}}, "stop.at_least"),
    ("stop target NaN", {"stop": {"metric": "loss", "at_most": math.nan}}, "stop.at_most"),
]


@pytest.mark.parametrize("changes, key", [(c, k) for _, c, k in BAD], ids=[d for d, _, _ in BAD])
def test_bad_recipes_name_the_offending_key(changes, key):
    assert len(BAD) >= 15
    data = with_changes(MINIMAL, **changes)
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(data)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"{key}: ") and "\n" not in message


@pytest.mark.parametrize("data", [None, [], "name: x", 3])
def test_recipe_must_be_a_mapping(data):
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(data)
    assert info.value.key == "recipe"


# --- load_recipe ----------------------------------------------------------------------------------

def test_load_recipe_reads_a_yaml_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(FULL, sort_keys=False))
    recipe = load_recipe(path)
    assert recipe.to_dict() == Recipe.from_dict(copy.deepcopy(FULL)).to_dict()
    assert load_recipe(str(path)).name == "digits-cnn"


def test_load_recipe_accepts_yaml_exponents_without_a_dot(tmp_path):
    # YAML 1.1 reads 1e-4 as a string: the space accepts numeric strings
    path = tmp_path / "exp.yaml"
    path.write_text("name: toy\nobjective: {metric: score, mode: max}\npopulation: 4\nintervals: 3\n"
                    "worker: workers.toys:lr_decay\n"
                    "space:\n  lr: {type: log, low: 1e-6, high: 1, init: [1e-5, 1e-4]}\n")
    recipe = load_recipe(path)
    assert recipe.space.param("lr").low == pytest.approx(1e-6)
    assert recipe.space.param("lr").init == pytest.approx((1e-5, 1e-4))


@pytest.mark.parametrize("text", [
    "name: toy\npopulation: [1, 2\n",
    "name: toy\n  bad: : 1\n",
    "\tname: toy\n",
    "name: \"unterminated\n",
    "a: &x 1\nb: *y\n",
])
def test_load_recipe_invalid_yaml_is_one_line_naming_the_file(tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(HoptError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert "YAML" in message


def test_load_recipe_missing_file_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "nowhere" / "exp.yaml"
    with pytest.raises(HoptError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_load_recipe_directory_is_a_hopt_error(tmp_path):
    with pytest.raises(HoptError) as info:
        load_recipe(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_load_recipe_binary_file_is_a_hopt_error(tmp_path):
    path = tmp_path / "weights.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00\xff\xfe\x00\x80binary")
    with pytest.raises(HoptError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_recipe_invalid_recipe_names_file_and_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(with_changes(MINIMAL, population=1)))
    with pytest.raises(HoptError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "population" in message and "\n" not in message


def test_load_recipe_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(HoptError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_yaml_1_1_booleans_stay_the_words_the_recipe_wrote(tmp_path):
    """`on`, `off`, `yes`, `no` are strings, as in YAML 1.2: only true and false are booleans."""
    path = tmp_path / "exp.yaml"
    path.write_text("name: on\nobjective: {metric: score, mode: max}\npopulation: 4\nintervals: 3\n"
                    "worker: workers.toys:pbt_quadratic\n"
                    "space:\n  bn: {type: choice, values: [on, off, yes, no, Y, N]}\n"
                    "  flag: {type: choice, values: [True, FALSE]}\n")

    recipe = load_recipe(path)

    assert recipe.name == "on"
    assert recipe.space.param("bn").values == ("on", "off", "yes", "no", "Y", "N")
    assert recipe.space.param("flag").values == (True, False)
    stored = tmp_path / "stored.yaml"  # experiment.yaml is written with safe_dump: the words stay strings there
    stored.write_text(yaml.safe_dump(recipe.to_dict()))
    assert load_recipe(stored).to_dict() == recipe.to_dict()


@pytest.mark.parametrize("command, missing", [
    ("python train.py --lr {h0} --out {out}", "has no {parent}: {parent} is the checkpoint folder"),
    ("python train.py --lr {h0} --resume {parent}", "has no {out}: {out} is the folder for the interval's"),
    ("python train.py --lr {h0}", "has no {parent} and no {out}: {parent} is"),
])
def test_a_command_without_parent_or_out_is_refused_at_init(tmp_path, command, missing):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(with_changes(MINIMAL, worker=DROP, command=command)))

    result = hopt("init", str(path), "--dir", str(tmp_path / "exp"))

    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"hopt: error: {path}: command: {missing}")
    assert "pass it, e.g." in result.stderr and not (tmp_path / "exp").exists()


def test_an_experiment_whose_stored_command_predates_the_check_still_opens(tmp_path):
    root = tmp_path / "exp"
    command = "python train.py --lr {h0} --resume {parent} --out {out}"
    Store.create(root, Recipe.from_dict(with_changes(MINIMAL, worker=DROP, command=command)))
    stored = root / "experiment.yaml"  # as a hopt before the check wrote it
    stored.write_text(stored.read_text().replace(" --resume {parent}", ""))

    result = invoke("status", "--dir", str(root))

    assert result.exit_code == 0, result.output
    assert result.output.startswith("toy: 0/40 intervals")


def test_a_stored_recipe_drops_the_switches_an_earlier_hopt_wrote_and_equals_its_recipe(tmp_path):
    root = tmp_path / "exp"
    Store.create(root, Recipe.from_dict(copy.deepcopy(MINIMAL)))
    stored = root / "experiment.yaml"  # as a hopt that wrote ROMUL's ablation switches among the settings left it
    data = yaml.safe_load(stored.read_text())
    stored.write_text(yaml.safe_dump({**data, "policy": {**data["policy"], "wait": True, "de_move": True,
                                                         "sigma0": 0.3}}, sort_keys=False))

    recipe = Store.open(root).recipe

    assert recipe.policy.settings == {**Recipe.from_dict(copy.deepcopy(MINIMAL)).policy.settings, "sigma0": 0.3}
    Store.create(root, Recipe.from_dict(with_changes(MINIMAL, policy={"name": "romul", "sigma0": 0.3})))  # the same


@pytest.mark.parametrize("stop", [{"metric": "val_acc", "at_least": 0.99}, {"metric": "loss", "at_most": 1},
                                  {"hours": 12}, {"metric": "val_acc", "at_least": 0.99, "hours": 0.5}])
def test_stop_rules_round_trip_through_the_resolved_form(stop):
    recipe = Recipe.from_dict(with_changes(MINIMAL, stop=stop))

    assert recipe.stop.to_dict() == {k: float(v) if not isinstance(v, str) else v for k, v in stop.items()}
    assert Recipe.from_dict(recipe.to_dict(), stored=True) == recipe


def test_a_recipe_without_stop_resolves_as_before():
    assert "stop" not in Recipe.from_dict(MINIMAL).to_dict() and Recipe.from_dict(MINIMAL).stop is None


def test_a_bad_stop_at_init_is_one_line_exit_2_and_creates_nothing(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(with_changes(MINIMAL, stop={"metric": "val_acc"})))

    result = invoke("init", str(path), "--dir", str(tmp_path / "exp"))

    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"hopt: error: {path}: stop: give exactly one of at_least or at_most with metric val_acc (got neither)"]
    assert not (tmp_path / "exp" / "experiment.yaml").exists()
