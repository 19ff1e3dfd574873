"""hopt's error types: one root, so only the CLI decides how an error becomes an exit status.

The class says the status, as click's do: a plain `HoptError` is a mistake in what the user typed or
chose (a recipe, an option, a directory) and exits 2; a `RuntimeFailure` is something that failed while
hopt ran (a file of the experiment, the lock, SLURM, the filesystem, the experiment itself) and exits 1.
Either way the CLI prints one line on stderr, never a traceback.
"""
from __future__ import annotations

import shlex
import signal


def command(*words: object) -> str:
    """A command line that a message suggests, each word shell-quoted, so that it pastes whole into a shell
    even where a path holds a space, a quote or a `ü`: `command("hopt", "retry", "--dir", root)`."""
    return shlex.join(str(word) for word in words)


class HoptError(Exception):
    """A problem in the user's input (recipe, command line, directory); the CLI prints it on one line and exits 2."""

    exit_code = 2


class RuntimeFailure(HoptError):
    """Something failed that the user did not type: running again may work once the cause is fixed. Exit 1."""

    exit_code = 1


class Interrupted(HoptError):
    """A stop signal ended a run; its workers released their members, so the run can resume. Exit 130."""

    exit_code = 130

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(f"stopped by {signum.name}; run the same command again to resume")
        self.signal = signum


class ExperimentFailed(RuntimeFailure):
    """The experiment cannot go on (a member kept failing, workers stopped before it was complete)."""


class CorruptFile(RuntimeFailure):
    """A file of the experiment directory cannot be read; names the file and what to do."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path


class RecipeError(HoptError):
    """A recipe value is wrong; the message names the key path (e.g. `space.lr.low`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class FilesystemError(RuntimeFailure):
    """The shared filesystem keeps failing a read (ESTALE, EIO) after retries."""

    def __init__(self, path: object, problem: str, attempts: int) -> None:
        super().__init__(f"{path}: {problem} ({attempts} times in a row): the shared filesystem is failing; "
                         "check its mount (`hopt doctor --dir D` tests it), then start the workers again")
        self.path = path


class LockTimeout(RuntimeFailure, TimeoutError):
    """The experiment lock could not be taken in time; carries the lock file's path."""

    def __init__(self, path: object, timeout: float) -> None:
        super().__init__(f"{path}: could not take the experiment lock in {timeout:.0f} s; "
                         "a process may hang inside a critical section (check `hopt status`)")
        self.path = path


class LockNotExclusive(RuntimeFailure):
    """Our journal appends keep reading back void: others write while we hold the lock."""

    def __init__(self, path: object, conflicts: int, lock: str) -> None:
        fix = ("use `lock: hardlink` (in the recipe, or in experiment.yaml while no worker runs)" if lock == "flock"
               else "check that every node mounts the directory the same way")
        super().__init__(f"{path}: {conflicts} of our appends in a row came after other workers' appends we had "
                         f"not read, although we held the {lock} lock: it does not exclude on this filesystem; "
                         f"{fix}; `hopt doctor --dir D` tests it. The experiment is intact: void events count for nobody")
        self.path = path


class SlurmFailed(RuntimeFailure):
    """A SLURM command (sbatch, scontrol) is missing, got no answer, or failed; names what to do instead."""
