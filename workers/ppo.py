"""Reinforcement learning, PBT's home ground: PPO on gymnasium's CartPole-v1 (shipped with gymnasium,
nothing downloaded), a small actor-critic MLP trained on 8 environments stepped in lockstep.

One step of an interval is one PPO update: a rollout of 128 steps in each environment (1,024
transitions), advantages by GAE(lambda), then `epochs` passes over the rollout in 4 minibatches of the
clipped surrogate objective, the value loss and the entropy bonus. Hyperparameters (all optional,
defaults below): `lr` (log, Adam's learning rate), `ent_coef` (log or float, the weight of the entropy
bonus), and the usual PPO constants `clip`, `gamma`, `gae_lambda`, `vf_coef`, `max_grad_norm`, `epochs`.

Episodes are seeded: validation episodes use the seeds VAL_SEEDS, the held-out test episodes TEST_SEEDS,
training episodes seeds from TRAIN_SEED_BASE up, drawn from torch's generator; the three sets are
disjoint, so `test_return` of an exported model is of episodes no training step and no selection saw.
Both are the mean undiscounted return of the greedy policy (the action of highest probability).
Objective: `val_return` (max); also `test_return`, `train_return` (the mean return of the training
episodes that ended in the interval), `train_episodes`, `entropy` (of the policy on the rollouts),
`step` (PPO updates), `env_steps` and `device`. The environments' states travel in the checkpoint, so an
episode running at the end of an interval continues in the next one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.torch_common import (SETTINGS, device_name, finish, interval_device, merge_hparams, resume,
                                  set_optimizer_hparams, train_steps)

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

ENV_ID = "CartPole-v1"
DEFAULTS: dict[str, Any] = {"lr": 2.5e-4, "ent_coef": 0.01, "clip": 0.2, "gamma": 0.99, "gae_lambda": 0.95,
                            "vf_coef": 0.5, "max_grad_norm": 0.5, "epochs": 4, **SETTINGS}
N_ENVS = 8
ROLLOUT = 128
MINIBATCHES = 4
HIDDEN = 64
VAL_SEEDS = tuple(range(1_000, 1_016))
TEST_SEEDS = tuple(range(2_000, 2_032))
TRAIN_SEED_BASE = 2**31  # training episodes' seeds lie in [2**31, 2**32): never a validation or test seed


def make_env() -> tuple[Any, int]:
    """(the unwrapped environment, its time limit): stepped without wrappers, the limit counted here."""
    spec = gym.spec(ENV_ID)
    return gym.make(ENV_ID, disable_env_checker=True).unwrapped, int(spec.max_episode_steps)


class ActorCritic(nn.Module):
    """Separate two-layer tanh MLPs for the action logits and the state value, orthogonally initialised."""

    def __init__(self, obs_dim: int, actions: int) -> None:
        super().__init__()
        self.actor = nn.Sequential(_layer(obs_dim, HIDDEN), nn.Tanh(), _layer(HIDDEN, HIDDEN), nn.Tanh(),
                                   _layer(HIDDEN, actions, gain=0.01))
        self.critic = nn.Sequential(_layer(obs_dim, HIDDEN), nn.Tanh(), _layer(HIDDEN, HIDDEN), nn.Tanh(),
                                    _layer(HIDDEN, 1, gain=1.0))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(obs), self.critic(obs).squeeze(-1)


def _layer(inputs: int, outputs: int, gain: float = 2**0.5) -> nn.Linear:
    layer = nn.Linear(inputs, outputs)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class TrainingEnvs:
    """N_ENVS environments stepped together; an episode that ends is reset at once with a fresh seed."""

    def __init__(self, saved: dict[str, torch.Tensor] | None) -> None:
        made = [make_env() for _ in range(N_ENVS)]
        self.envs, self.limit = [env for env, _ in made], made[0][1]
        self.obs = np.zeros((N_ENVS, *self.envs[0].observation_space.shape), dtype=np.float32)
        self.elapsed = np.zeros(N_ENVS, dtype=np.int64)
        self.returns = np.zeros(N_ENVS)
        self.finished: list[float] = []
        if saved is None:
            for i in range(N_ENVS):
                self._reset(i)
            return
        for i, env in enumerate(self.envs):
            env.reset(seed=0)  # sets the environment's other fields; its episode is the saved one
            env.state = saved["state"][i].numpy().copy()
        self.obs[:] = saved["obs"].numpy()
        self.elapsed[:] = saved["elapsed"].numpy()
        self.returns[:] = saved["returns"].numpy()

    def _reset(self, i: int) -> None:
        seed = TRAIN_SEED_BASE + int(torch.randint(2**31, (1,)))
        self.obs[i], _ = self.envs[i].reset(seed=seed)
        self.elapsed[i], self.returns[i] = 0, 0.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """(next observations, rewards, episode ended, {env: last observation} of episodes cut by the limit)."""
        rewards, ended, cut = np.zeros(N_ENVS), np.zeros(N_ENVS, dtype=bool), {}
        for i, env in enumerate(self.envs):
            obs, reward, terminated, _, _ = env.step(int(actions[i]))
            self.elapsed[i] += 1
            self.returns[i] += reward
            rewards[i], self.obs[i] = reward, obs
            if terminated or self.elapsed[i] >= self.limit:
                if not terminated:
                    cut[i] = np.array(obs, dtype=np.float32)
                ended[i] = True
                self.finished.append(float(self.returns[i]))
                self._reset(i)
        return self.obs.copy(), rewards, ended, cut

    def state(self) -> dict[str, torch.Tensor]:
        """What resuming needs: each environment's physical state, observation, episode length and return."""
        return {"state": torch.tensor(np.array([env.state for env in self.envs], dtype=np.float64)),
                "obs": torch.from_numpy(self.obs.copy()), "elapsed": torch.from_numpy(self.elapsed.copy()),
                "returns": torch.from_numpy(self.returns.copy())}


@torch.no_grad()
def evaluate(model: ActorCritic, seeds: tuple[int, ...], dev: torch.device) -> float:
    """Mean undiscounted return of the greedy policy over one episode per seed, all stepped together."""
    made = [make_env() for _ in seeds]
    envs, limit = [env for env, _ in made], made[0][1]
    obs = np.stack([env.reset(seed=seed)[0] for env, seed in zip(envs, seeds)]).astype(np.float32)
    returns = np.zeros(len(envs))
    alive = list(range(len(envs)))
    for _ in range(limit):
        actions = model.actor(torch.from_numpy(obs[alive]).to(dev)).argmax(-1).cpu().numpy()
        still = []
        for i, action in zip(alive, actions):
            obs[i], reward, terminated, _, _ = envs[i].step(int(action))
            returns[i] += reward
            if not terminated:
                still.append(i)
        alive = still
        if not alive:
            break
    return float(returns.mean())


def _advantages(rewards: torch.Tensor, values: torch.Tensor, ended: torch.Tensor, last_value: torch.Tensor,
                gamma: float, lam: float) -> torch.Tensor:
    """GAE(lambda) over a rollout of T x N steps; `ended[t]` cuts the trace after step t."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(len(rewards))):
        following = last_value if t == len(rewards) - 1 else values[t + 1]
        going = 1.0 - ended[t]
        delta = rewards[t] + gamma * following * going - values[t]
        running = delta + gamma * lam * going * running
        advantages[t] = running
    return advantages


def train_interval(ctx: Context) -> dict[str, Any]:
    """Train ctx.steps PPO updates from ctx.parent (or from scratch), checkpoint to ctx.out, score."""
    hp = merge_hparams(DEFAULTS, ctx.hparams, "ppo")
    dev = interval_device(hp)
    probe, _ = make_env()
    obs_dim, actions = probe.observation_space.shape[0], int(probe.action_space.n)
    model, state = resume(ctx, lambda _: ActorCritic(obs_dim, actions).to(dev))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["lr"]), eps=1e-5)
    step, env_steps = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, env_steps = state["step"], state["env_steps"]
    envs = TrainingEnvs(None if state is None else state["envs"])
    del state  # the parent's tensors: not held through the interval
    set_optimizer_hparams(optimizer, lr=float(hp["lr"]))
    gamma, lam, clip = float(hp["gamma"]), float(hp["gae_lambda"]), float(hp["clip"])
    entropies: list[torch.Tensor] = []

    def one_update() -> torch.Tensor:
        obs = torch.zeros(ROLLOUT, N_ENVS, obs_dim)
        taken = torch.zeros(ROLLOUT, N_ENVS, dtype=torch.int64)
        logps, values, rewards, ended = (torch.zeros(ROLLOUT, N_ENVS) for _ in range(4))
        current = torch.from_numpy(envs.obs.copy())
        with torch.no_grad():
            for t in range(ROLLOUT):
                logits, value = model(current.to(dev))
                logp = F.log_softmax(logits, -1)
                action = torch.multinomial(logp.exp(), 1).squeeze(-1)
                obs[t], taken[t], values[t] = current, action.cpu(), value.cpu()
                logps[t] = logp.gather(-1, action[:, None]).squeeze(-1).cpu()
                following, reward, done, cut = envs.step(action.cpu().numpy())
                if cut:  # cut by the time limit, not failed: the return goes on beyond, bootstrap it
                    last = torch.from_numpy(np.stack(list(cut.values()))).to(dev)
                    reward[list(cut)] += gamma * model.critic(last).squeeze(-1).cpu().double().numpy()
                rewards[t], ended[t] = torch.from_numpy(reward), torch.from_numpy(done)
                current = torch.from_numpy(following)
            last_value = model.critic(current.to(dev)).squeeze(-1).cpu()
        advantages = _advantages(rewards, values, ended, last_value, gamma, lam)
        returns = advantages + values
        flat = [x.flatten(0, 1).to(dev) for x in (obs, taken, logps, advantages, returns)]
        size = ROLLOUT * N_ENVS // MINIBATCHES
        losses = []
        for _ in range(int(hp["epochs"])):
            for idx in torch.randperm(ROLLOUT * N_ENVS).to(dev).split(size):
                b_obs, b_act, b_logp, b_adv, b_ret = (x[idx] for x in flat)
                logits, value = model(b_obs)
                logp = F.log_softmax(logits, -1)
                ratio = (logp.gather(-1, b_act[:, None]).squeeze(-1) - b_logp).exp()
                b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
                policy_loss = -torch.min(ratio * b_adv, ratio.clamp(1 - clip, 1 + clip) * b_adv).mean()
                entropy = -(logp.exp() * logp).sum(-1).mean()
                loss = policy_loss + float(hp["vf_coef"]) * 0.5 * F.mse_loss(value, b_ret) \
                    - float(hp["ent_coef"]) * entropy
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), float(hp["max_grad_norm"]))
                optimizer.step()
                losses.append(loss.detach())
                entropies.append(entropy.detach())
        return torch.stack(losses).mean()

    model.train()
    done, train_loss = train_steps(ctx, one_update)
    step, env_steps = step + done, env_steps + done * ROLLOUT * N_ENVS
    model.eval()
    val_return = evaluate(model, VAL_SEEDS, dev)
    test_return = evaluate(model, TEST_SEEDS, dev)
    finish(ctx, model=model.state_dict(), optimizer=optimizer.state_dict(), envs=envs.state(), step=step,
           env_steps=env_steps)
    return {"val_return": val_return, "test_return": test_return,
            "train_return": float(np.mean(envs.finished)) if envs.finished else float("nan"),
            "train_episodes": len(envs.finished), "train_loss": train_loss,
            "entropy": float(torch.stack(entropies).mean()) if entropies else float("nan"),
            "step": step, "env_steps": env_steps, "device": device_name(dev)}
