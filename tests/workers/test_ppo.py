"""The PPO trainable trains, resumes, repeats itself given its seed, and keeps its test episodes held out."""
from __future__ import annotations

import math

import pytest

from tests.workers.conftest import assert_same_tensors, chain, load_state, short_pbt
from workers import ppo


def _train(make_ctx, hparams, intervals, steps=2, parent=None, member=0, seed=0):
    return chain(ppo.train_interval, make_ctx, hparams, intervals, steps, parent, member, seed)


def test_an_interval_trains_and_reports_finite_metrics(make_ctx):
    metrics, folder = _train(make_ctx, {"lr": 1e-3, "ent_coef": 0.01}, intervals=1)
    assert metrics["step"] == 2 and metrics["env_steps"] == 2 * ppo.ROLLOUT * ppo.N_ENVS
    for key in ("val_return", "test_return", "train_return", "train_loss", "entropy"):
        assert math.isfinite(metrics[key]), key
    # CartPole pays 1 per step for at least a few steps and at most the time limit (500)
    assert 1 <= metrics["val_return"] <= 500 and 1 <= metrics["test_return"] <= 500
    assert metrics["train_episodes"] > 0 and metrics["device"] == "cpu"
    assert 0 < metrics["entropy"] <= math.log(2)  # two actions
    assert (folder / "checkpoint.pt").exists()


def test_resuming_continues_the_parent(make_ctx):
    hp = {"lr": 1e-3, "ent_coef": 0.01}
    _, parent = _train(make_ctx, hp, intervals=1)
    saved = load_state(parent)
    resumed, child = _train(make_ctx, hp, intervals=1, steps=1, parent=parent)
    assert resumed["step"] == 3 and load_state(child)["env_steps"] == 3 * ppo.ROLLOUT * ppo.N_ENVS
    # no training at all: the parent's weights are loaded, not fresh ones, and the episodes go on where they were
    untrained, idle = _train(make_ctx, hp, intervals=1, steps=0, parent=parent)
    assert untrained["step"] == 2
    assert_same_tensors(load_state(idle)["model"], saved["model"])
    assert_same_tensors(load_state(idle)["envs"], saved["envs"])


# Bit-exact: both runs are in this one process, so the same kernels on the same shapes in the same thread
# settings do the same float operations in the same order; the environments are pure NumPy from their seeds.
def test_a_seed_gives_the_same_run_twice_and_another_seed_another(make_ctx):
    hp = {"lr": 1e-3, "ent_coef": 0.01}
    first, first_dir = _train(make_ctx, hp, intervals=2, steps=1, seed=5)
    second, second_dir = _train(make_ctx, hp, intervals=2, steps=1, seed=5)
    other, other_dir = _train(make_ctx, hp, intervals=2, steps=1, seed=6)
    assert {k: first[k] for k in first} == {k: second[k] for k in second}
    assert_same_tensors(load_state(first_dir)["model"], load_state(second_dir)["model"])
    assert not (load_state(first_dir)["envs"]["obs"] == load_state(other_dir)["envs"]["obs"]).all()


def test_resume_is_exact(make_ctx):
    hp = {"lr": 1e-3, "ent_coef": 0.01}
    whole, whole_dir = _train(make_ctx, hp, intervals=1, steps=2)
    split, split_dir = _train(make_ctx, hp, intervals=2, steps=1)
    assert whole["val_return"] == split["val_return"] and whole["step"] == split["step"]
    assert_same_tensors(load_state(whole_dir)["model"], load_state(split_dir)["model"])


def test_validation_test_and_training_episodes_have_disjoint_seeds():
    val, test = set(ppo.VAL_SEEDS), set(ppo.TEST_SEEDS)
    assert len(val) == len(ppo.VAL_SEEDS) and len(test) == len(ppo.TEST_SEEDS) and not val & test
    assert max(val | test) < ppo.TRAIN_SEED_BASE and ppo.TRAIN_SEED_BASE + 2**31 <= 2**32  # numpy's seed range


def test_training_draws_its_episode_seeds_above_the_evaluation_seeds(make_ctx, monkeypatch):
    seeds: list[int] = []
    original = ppo.TrainingEnvs._reset

    def reset(self, i):
        original(self, i)
        seeds.append(int(self.envs[i].np_random_seed))

    monkeypatch.setattr(ppo.TrainingEnvs, "_reset", reset)
    _train(make_ctx, {}, intervals=1, steps=1)
    assert len(seeds) > ppo.N_ENVS and all(ppo.TRAIN_SEED_BASE <= s < 2**32 for s in seeds)


def test_hparams_changed_between_intervals_take_effect(make_ctx):
    _, parent = _train(make_ctx, {"lr": 1e-3, "ent_coef": 0.01}, intervals=1, steps=1)
    _, child = _train(make_ctx, {"lr": 3e-5, "ent_coef": 0.1}, intervals=1, steps=1, parent=parent)
    assert load_state(child)["optimizer"]["param_groups"][0]["lr"] == 3e-5
    # the entropy bonus's weight changes the update itself: same parent, same noise, other ent_coef
    _, same = _train(make_ctx, {"lr": 3e-5, "ent_coef": 0.0}, intervals=1, steps=1, parent=parent)
    assert not (load_state(child)["model"]["actor.4.weight"] == load_state(same)["model"]["actor.4.weight"]).all()


def test_an_unknown_hparam_is_refused(make_ctx):
    with pytest.raises(ValueError, match="ppo: unknown hyperparameter"):
        ppo.train_interval(make_ctx({"entropy": 0.1}))


def test_a_stop_request_ends_the_interval_after_the_update_in_progress(make_ctx):
    metrics = ppo.train_interval(make_ctx({}, steps=5, should_stop=lambda: True))
    assert metrics["step"] == 1


@pytest.mark.slow
def test_the_recipe_runs_through_hopt(tmp_path):
    short_pbt(tmp_path, "ppo-cartpole.yaml", population=2, intervals=2, steps=1)
