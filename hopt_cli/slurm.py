"""The scheduler in one place: SLURM's environment, the worker array's sbatch script, requeue.

A worker array is one sbatch script: every task runs `hopt worker --dir D`, requeue-able, with logs
appended across restarts and a preemption signal (`--signal=B:USR1@grace`) that reaches Python because
the batch shell `exec`s the worker. Nothing here trains or touches the experiment's state.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.errors import HoptError, SlurmFailed
from hopt_cli.store.fsio import write_atomic
from hopt_cli.store.paths import ExperimentPaths, safe_name
from hopt_cli.text import counted
from hopt_cli.trainable import THREAD_VARIABLES

log = logging.getLogger("hopt")

COMMAND_TIMEOUT = 120.0  # seconds; sbatch and scontrol retry for a while when slurmctld is slow

_VARIABLES = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "node": "SLURMD_NODENAME",
}


@dataclass(frozen=True)
class SlurmEnvironment:
    """Who this process is to SLURM; every field is None (restart_count 0) outside a SLURM job."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: str | None = None
    restart_count: int = 0
    node: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlurmEnvironment:
        """Read the SLURM_* variables (of os.environ by default); empty values count as unset."""
        env = os.environ if env is None else env
        values = {name: env.get(variable) or None for name, variable in _VARIABLES.items()}
        restarts = values.pop("restart_count")
        return cls(**values, restart_count=int(restarts) if restarts and restarts.isdigit() else 0)

    @property
    def is_array_task(self) -> bool:
        return self.array_job_id is not None and self.array_task_id is not None

    @property
    def requeue_target(self) -> str | None:
        """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else the job id."""
        if self.is_array_task:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    @property
    def worker_name(self) -> str | None:
        """A filesystem-safe identity that survives requeues (`slurm-<array job>_<task>`), else None."""
        target = self.requeue_target
        return None if target is None else safe_name(f"slurm-{target}")


SBATCH_TIME = re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|UNLIMITED|INFINITE")  # sbatch(1), --time
SBATCH_MEM = re.compile(r"\d+([KMGT]B?)?", re.IGNORECASE)  # megabytes, or with a unit: what sbatch --mem reads
_GRES = r"[A-Za-z_][\w.-]*(:\w[\w.-]*)?(:\d+[KMGT]?)?"  # name[:type][:count]
SBATCH_GRES = re.compile(rf"{_GRES}(,{_GRES})*")
SBATCH_PARTITION = re.compile(r"[^\s,]+(,[^\s,]+)*")  # one or more names, comma-separated


@dataclass(frozen=True)
class SbatchOptions:
    """What `hopt slurm` puts into the worker array's sbatch script."""

    directory: Path
    array: int
    parallelism: int | None = None
    partition: str | None = None
    time: str | None = None
    gres: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    grace: int = 120
    job_name: str | None = None
    extra: Sequence[str] = ()
    setup: Sequence[str] = ()
    command: str = "hopt worker"
    requeue: bool = False
    project: Path | None = None  # the tasks' working directory (--chdir): where the trainable is imported from
    workers_per_task: int = 1  # `hopt worker --workers K`: one per GPU of the task
    python_bin: Path | None = None  # put first on PATH: the folder of hopt's interpreter (its environment's bin)

    def __post_init__(self) -> None:
        # Absolute and normalised: the script runs in whatever directory sbatch was called from.
        object.__setattr__(self, "directory", Path(os.path.abspath(self.directory)))
        object.__setattr__(self, "extra", tuple(self.extra))
        object.__setattr__(self, "setup", tuple(self.setup))
        self._validate()

    def _validate(self) -> None:
        if self.array < 1:
            raise HoptError(f"--array must be at least 1 (got {self.array})")
        if self.parallelism is not None and self.parallelism < 1:
            raise HoptError(f"the array parallelism (%k) must be at least 1 (got {self.parallelism})")
        if self.workers_per_task < 1:
            raise HoptError(f"--workers-per-task must be at least 1 (got {self.workers_per_task})")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise HoptError(f"--cpus-per-task must be at least 1 (got {self.cpus_per_task})")
        for option, value, pattern, what in (
                ("--time", self.time, SBATCH_TIME, "a time sbatch reads; write minutes, HH:MM:SS or D-HH:MM:SS "
                 "(e.g. --time 04:00:00 for 4 hours)"),
                ("--mem", self.mem, SBATCH_MEM, "a size sbatch reads; write megabytes, or a whole number with the "
                 "unit K, M, G or T (e.g. --mem 32G)"),
                ("--gres", self.gres, SBATCH_GRES, "a resource sbatch reads; write name[:type][:count], "
                 "comma-separated (e.g. --gres gpu:1 or --gres gpu:a100:2)"),
                ("--partition", self.partition, SBATCH_PARTITION, "a partition name; give one, or several "
                 "separated by commas without spaces (sinfo lists them)")):
            if value is not None and not pattern.fullmatch(value):
                raise HoptError(f"{option} {value!r} is not {what}")
        gpus = gres_gpus(self.gres) if self.gres is not None else None
        if self.workers_per_task > 1 and gpus is not None and gpus != self.workers_per_task:
            how = "two or more share a GPU" if self.workers_per_task > gpus else \
                f"{counted(gpus - self.workers_per_task, 'GPU')} of each task stay idle"
            raise HoptError(f"--workers-per-task {self.workers_per_task} with --gres {self.gres}: each task gets "
                            f"{counted(gpus, 'GPU')}, so {how}; give --workers-per-task {gpus} (one worker per GPU), "
                            f"or ask for {self.workers_per_task} GPUs in --gres")
        for option in self.extra:
            if not option.startswith("-"):
                raise HoptError(f"--sbatch {option!r} is no sbatch option, which sbatch refuses in its script; "
                                "write it as on sbatch's command line, e.g. --sbatch=--qos=high")
        if not 0 <= self.grace <= 65535:
            raise HoptError(f"the grace time must be 0..65535 seconds (sbatch's limit), got {self.grace}")
        for line in (*self.extra, *self.setup, self.command):
            if "\n" in line or "\r" in line:
                raise HoptError(f"{line!r} spans several lines; give one line per option")

    @property
    def paths(self) -> ExperimentPaths:
        return ExperimentPaths(self.directory)

    @property
    def name(self) -> str:
        return safe_name(self.job_name or f"hopt-{self.directory.name}")


def gres_gpus(gres: str) -> int | None:
    """How many GPUs a valid --gres asks for per task (`gpu`, `gpu:2`, `gpu:a100:2`); None: no GPUs."""
    for resource in gres.split(","):
        name, *rest = resource.split(":")
        if name == "gpu":
            return int(rest[-1]) if rest and rest[-1].isdigit() else 1
    return None


def worker_command() -> str:
    """`hopt worker` as this very installation runs it: a task may start with another PATH than ours."""
    return f"{shlex.quote(sys.executable)} -m hopt_cli worker"


def our_bin() -> Path:
    """The folder of this hopt's interpreter (a virtual environment's bin): first on the tasks' PATH."""
    return Path(sys.executable).parent


NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # folders each node has its own of


def node_local_warning() -> str | None:
    """What to say when this hopt's interpreter lives in a node-local folder, which the tasks' nodes lack."""
    local = [*NODE_LOCAL, *([os.environ["TMPDIR"]] if os.environ.get("TMPDIR") else [])]
    where = os.path.abspath(sys.executable)
    folder = next((f for f in local if where.startswith(os.path.join(os.path.abspath(f), ""))), None)
    if folder is None:
        return None
    return (f"this hopt runs from {where}, under {folder}, which is local to this node: tasks on other nodes "
            "will not find it; install hopt where every node sees it (a shared home or project folder), or give "
            "--command")


def render_sbatch(options: SbatchOptions) -> str:
    """The sbatch script of a worker array; the same options always give the same text."""
    array = f"0-{options.array - 1}" + (f"%{options.parallelism}" if options.parallelism else "")
    directives = [
        f"--job-name={options.name}",
        f"--array={array}",
        "--requeue",
        "--open-mode=append",
        f"--output={shlex.quote(str(options.paths.slurm_log_pattern))}",  # stderr too: one log per worker
        f"--signal=B:USR1@{options.grace}",
    ]
    optional = {"chdir": shlex.quote(str(options.project)) if options.project else None,
                "partition": options.partition, "time": options.time, "gres": options.gres,
                "cpus-per-task": options.cpus_per_task, "mem": options.mem}
    directives += [f"--{flag}={value}" for flag, value in optional.items() if value is not None]
    directives += options.extra
    worker = f"exec {options.command} --dir {shlex.quote(str(options.directory))}"
    if options.workers_per_task > 1:
        worker += f" --workers {options.workers_per_task}"
    lines = [
        "#!/bin/bash",
        f"# hopt worker array for {options.directory}, written by `hopt slurm`: write it again, don't edit.",
        *(f"#SBATCH {directive}" for directive in directives),
        "",
        "set -euo pipefail",
        *_environment(options),
        *options.setup,
        "# exec: the worker replaces this shell, so SIGUSR1 from --signal=B: reaches it directly"
        + (" (and it passes the signal on to its workers)." if options.workers_per_task > 1 else "."),
        worker + (" --requeue" if options.requeue else ""),
    ]
    return "\n".join(lines) + "\n"


def _environment(options: SbatchOptions) -> list[str]:
    """The script's lines that set hopt's environment first on PATH, the GPUs' order and the threads from the
    task's cores."""
    lines = []
    if options.python_bin is not None:
        lines += ["# this hopt's environment first on PATH: a command trainable's `python` is the one hopt runs in",
                  f'export PATH={shlex.quote(str(options.python_bin))}:"$PATH"']
    lines += ["# GPUs numbered as nvidia-smi numbers them, not fastest first",
              'export CUDA_DEVICE_ORDER="${CUDA_DEVICE_ORDER:-PCI_BUS_ID}"']
    k = options.workers_per_task
    share = "$SLURM_CPUS_PER_TASK" if k == 1 else \
        f"$(( SLURM_CPUS_PER_TASK >= {k} ? SLURM_CPUS_PER_TASK / {k} : 1 ))"
    shared = "" if k == 1 else f", shared by its {k} workers"
    return lines + [
        f"# torch and BLAS threads: the task's cores (--cpus-per-task){shared}, not one per core of the node",
        'if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then',
        f"  threads={share}",
        f"  export {' '.join(f'{name}=$threads' for name in THREAD_VARIABLES)}",
        "fi",
    ]


def write_sbatch(options: SbatchOptions) -> Path:
    """Write `<dir>/slurm/worker.sbatch` atomically (executable as far as the umask allows) and make logs/."""
    paths = options.paths
    path = paths.sbatch_script
    try:
        paths.slurm.mkdir(parents=True, exist_ok=True)
        paths.logs.mkdir(exist_ok=True)
        write_atomic(path, render_sbatch(options).encode(), mode=0o777)
    except OSError as err:
        raise HoptError(f"cannot write {path}: {err.strerror}; choose a --dir you can write to") from None
    return path


def submit(script: Path) -> str:
    """Submit `script` with `sbatch --parsable` and return the job id."""
    out = _run(["sbatch", "--parsable", str(script)],
               fix=f"check the #SBATCH lines of {script}, or submit it yourself: sbatch {script}")
    job_id = out.strip().split(";")[0]
    if not job_id:
        raise SlurmFailed(f"sbatch printed no job id for {script}; check `squeue --me` before submitting again")
    return job_id


def check_requeue(env: SlurmEnvironment) -> None:
    """Refuse `--requeue` up front where there is no SLURM job to requeue."""
    if env.requeue_target is None:
        raise HoptError("--requeue needs a SLURM job (no SLURM_JOB_ID here); drop --requeue outside SLURM")


def requeue_if_preempted(env: SlurmEnvironment, preempted: bool, complete: bool) -> None:
    """After the workers stopped: requeue this job if the preemption signal stopped them with work left."""
    if preempted and not complete:
        log.info("preempted with work left: requeueing SLURM job %s", env.requeue_target)
        requeue(env)


def requeue_after_poisoning(env: SlurmEnvironment, reason: str) -> None:
    """After a CUDA error broke this worker's process (it exits POISONED_EXIT): requeue this job, so that a
    fresh process takes over its task, as `hopt run` replaces such a worker. `reason` says what broke."""
    log.info("%s: requeueing SLURM job %s for a fresh process", reason, env.requeue_target)
    requeue(env)


def requeue(env: SlurmEnvironment) -> None:
    """Ask SLURM to requeue this job (`scontrol requeue`); SLURM then stops the running instance."""
    check_requeue(env)
    _run(["scontrol", "requeue", str(env.requeue_target)],
         fix="submit with --requeue on a cluster with JobRequeue=1, or requeue it yourself later")


def _run(argv: list[str], fix: str) -> str:
    """Run a SLURM command and return its stdout; any failure is a SlurmFailed naming `fix`."""
    command = shlex.join(argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise SlurmFailed(f"{argv[0]} not found on PATH: SLURM is not installed here; "
                          f"run this on a SLURM login node, or {fix}") from None
    except subprocess.TimeoutExpired:
        raise SlurmFailed(f"{command} got no answer in {COMMAND_TIMEOUT:.0f} s (is slurmctld up? try sinfo); "
                          f"{fix}") from None
    if done.returncode != 0:
        stderr = "; ".join(line.strip() for line in done.stderr.splitlines() if line.strip()) or "no message"
        raise SlurmFailed(f"{command} failed (exit {done.returncode}): {stderr}; {fix}")
    return done.stdout

