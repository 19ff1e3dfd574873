"""Starting an experiment: `hopt init`, `hopt run` and, from Python, `hopt_cli.run()`.

A recipe comes as a YAML file, a mapping (validated exactly like the file) or a Recipe. From Python the
trainable may be any callable, a function of a script or a notebook included: it reaches the worker
processes through their standard input (cloudpickle, which carries a `__main__` function by value),
never through the experiment directory. experiment.yaml names it as `module:function` all the same.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hopt_cli.errors import ExperimentFailed, HoptError, Interrupted
from hopt_cli.experiment import Experiment
from hopt_cli.progress import Progress, ProgressLine
from hopt_cli.recipe import Recipe, load_recipe
from hopt_cli.runner import RunResult, choose_gpus, default_gpus, mig_devices, run_local
from hopt_cli.text import counted
from hopt_cli.store import Store
from hopt_cli.store.paths import ExperimentPaths
from hopt_cli.trainable import Context, load_trainable

log = logging.getLogger("hopt")
RecipeSource = str | os.PathLike | Mapping[str, Any] | Recipe
Trainable = Callable[[Context], Any]


def create(recipe: RecipeSource, root: str | os.PathLike, trainable: Trainable | None = None) -> Store:
    """Validate the recipe completely (the trainable must import, or be given), then create the experiment.

    The project directory (the recipe's `project`, else the current one) is recorded: every worker
    imports and runs the trainable there, wherever it was started, and a rerun resumes there too."""
    root = Path(root)
    resolved = _recipe(recipe, trainable)
    if resolved.project is None and ExperimentPaths(root).experiment.is_file():
        resolved = replace(resolved, project=Store.open(root).recipe.project)
    else:
        resolved = resolved.in_project(os.getcwd())
    if resolved.project is not None and not os.path.isdir(resolved.project):
        where = f"{recipe}: " if isinstance(recipe, (str, os.PathLike)) else ""
        raise HoptError(f"{where}project: {resolved.project} is not a directory; give the directory your "
                        "trainable is imported from and runs in")
    if trainable is None:
        load_trainable(resolved.trainable, resolved.command, resolved.project)
    return Store.create(root, resolved)


def run(recipe: RecipeSource, dir: str | os.PathLike, workers: int = 2,
        trainable: Trainable | None = None, gpus: str | None = None, progress: Progress | None = None) -> Experiment:
    """Run the experiment to completion with `workers` local worker processes; run it again to resume.

    `trainable` (any callable taking a Context) replaces the recipe's `worker`. `gpus` ("0,1,2,3" or
    "all") gives each worker one GPU as its only visible device, round-robin when there are more
    workers than GPUs; without it, several visible GPUs are shared out so (default_gpus). The run reports
    to `progress` (None: a ProgressLine on stderr, as `hopt run` draws it); Ctrl-C stops the workers, which
    release their members (a second one kills them), and raises Interrupted. A failed experiment raises
    ExperimentFailed."""
    if workers < 1:
        raise HoptError(f"workers must be at least 1 (got {workers})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = choose_devices(gpus, visible) if gpus else default_gpus(workers, visible, _nvidia_smi_list)
    store = create(recipe, dir, trainable)
    if trainable is not None and store.recipe.interval_timeout is not None:
        raise HoptError("interval_timeout runs each interval in a child process that imports the trainable by "
                        "name: give the trainable as the recipe's worker (module:function) instead")
    progress = progress or ProgressLine()
    warning = command_warning(store.recipe)
    if warning:
        progress.say(f"warning: {warning}")
    on = f", GPUs {','.join(devices)}" if devices else ""
    if devices and not gpus:
        share = "one per worker" if workers <= len(devices) else "shared round-robin, as workers outnumber them"
        on += f" ({share}, since --gpus was not given; --gpus chooses)"
    progress.say(f"{store.recipe.name}: {counted(workers, 'worker')} on {dir}{on} (logs in {store.paths.logs})")
    result = run_local(store, workers, progress.show, progress.say, trainable, devices)
    if result.interrupted:
        raise Interrupted(result.interrupted)
    check_ended(store, result)
    return Experiment(dir)


def command_warning(recipe: Recipe) -> str | None:
    """What to say of a command that receives not every searched hyperparameter (None: it receives all)."""
    names = recipe.unpassed
    if not names:
        return None
    which = f"hyperparameter{'s' if len(names) > 1 else ''} {', '.join(names)}"
    return (f"command: no placeholder for the searched {which}, so the values hopt picks never reach the "
            f"command; pass {'each' if len(names) > 1 else 'it'}, e.g. --{names[0]} {{{names[0]}}}, or drop "
            f"{'them' if len(names) > 1 else 'it'} from space")


def check_ended(store: Store, result: RunResult) -> None:
    """Raise ExperimentFailed if the experiment failed, a worker died once too often, or the workers ended
    unasked before it was complete."""
    if result.failed:
        raise ExperimentFailed(result.failed)
    if result.died:
        raise ExperimentFailed(result.died)
    if not result.complete and not result.interrupted and not result.stopped:
        bad = ", ".join(f"{n} (status {c}, see {store.paths.log(n)})" for n, c in result.exit_codes.items() if c)
        raise ExperimentFailed(f"workers stopped before the experiment was complete: {bad or 'none failed'}")


def run_task(store: Store, name: str, workers: int, preemption: signal.Signals,
             trainable: Trainable | None = None) -> RunResult:
    """`workers` worker processes for one SLURM task (`hopt worker --workers K`): worker k is `<name>-<k>`
    with a log of its own, on the k-th of the task's GPUs (CUDA_VISIBLE_DEVICES) when it has some, with
    its share of the task's cores; a stop or the preemption signal is passed on to all of them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    devices = choose_gpus("all", visible, _cuda_devices) if visible else None
    warning = check_task_gpus(workers, devices)
    if warning:
        log.warning("%s", warning)
    names = [f"{name}-{index}" for index in range(workers)]
    on = f" on GPUs {','.join(devices)}" if devices else ""
    log.info("starting %d workers%s: %s (logs in %s)", workers, on, ", ".join(names), store.paths.logs)
    return run_local(store, workers, lambda done, total, note: None, log.info, trainable, devices, names, preemption)


def check_task_gpus(workers: int, devices: list[str] | None) -> str | None:
    """Refuse more workers than the task has GPUs (they would share one: on an exclusive-process GPU every
    interval of all but one fails); what to say of fewer (the rest stay idle, but nothing fails)."""
    if not devices or workers == len(devices):
        return None
    fix = (f"start it with --workers {len(devices)} (hopt slurm --workers-per-task {len(devices)}), or give the task "
           f"{counted(workers, 'GPU')} (--gres gpu:{workers})")
    seen = f"this task sees {counted(len(devices), 'GPU')} (CUDA_VISIBLE_DEVICES={','.join(devices)})"
    if workers > len(devices):
        raise HoptError(f"hopt worker --workers {workers}: {seen}, so workers would share a GPU; {fix}")
    return f"hopt worker --workers {workers}: {seen}, so {len(devices) - workers} of them stay idle; {fix}"


def choose_devices(spec: str, visible: str | None) -> list[str]:
    """The devices of `--gpus` (see choose_gpus); `all` with no CUDA_VISIBLE_DEVICES on a machine whose GPUs are
    split by MIG gives every MIG slice, of which CUDA alone would show one."""
    if spec.strip() == "all" and visible is None:
        slices = mig_devices(_nvidia_smi_list())
        if slices:
            return slices
    return choose_gpus(spec, visible, _cuda_devices)


def _nvidia_smi_list() -> str:
    """What `nvidia-smi -L` prints; empty where there is no nvidia-smi or it fails (no driver)."""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _cuda_devices() -> int:
    """How many GPUs torch sees (imported only for `--gpus all`: it takes a second)."""
    import torch

    return torch.cuda.device_count()


def enter_project(recipe: Recipe) -> None:
    """Work in the experiment's project directory, as `hopt init` recorded it (older experiments: here)."""
    if recipe.project is None:
        return
    try:
        os.chdir(recipe.project)
    except OSError as err:
        raise ExperimentFailed(f"cannot enter the project directory {recipe.project} that `hopt init` recorded: "
                               f"{err.strerror}; make it reachable at that path on {socket.gethostname()}") from None


def _recipe(recipe: RecipeSource, trainable: Trainable | None) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe if trainable is None else replace(recipe, trainable=trainable_name(trainable), command=None)
    if isinstance(recipe, Mapping):
        data = dict(recipe)
    else:
        data = load_recipe(recipe).to_dict()
    if trainable is not None:
        data.pop("command", None)
        data["worker"] = trainable_name(trainable)
    return Recipe.from_dict(data)


def trainable_name(trainable: Trainable) -> str:
    """`module:function` for experiment.yaml; a lambda or a nested function has no such name."""
    if not callable(trainable):
        raise HoptError(f"trainable must be a callable taking a Context (got {type(trainable).__name__})")
    name = f"{getattr(trainable, '__module__', None)}:{getattr(trainable, '__qualname__', None)}"
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name):
        raise HoptError(f"trainable {name} is not a module-level function: define it with `def` at the top "
                        "level of its script, notebook or module, so experiment.yaml can name it")
    return name
