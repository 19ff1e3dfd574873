"""hopt's error types: one root, so only the CLI decides how an error becomes an exit status."""
from __future__ import annotations


class HoptError(Exception):
    """A problem the user can fix; the CLI prints it on one line and exits 2."""

    exit_code = 2


class ExperimentFailed(HoptError):
    """The experiment cannot go on (a member kept failing); the CLI exits 1."""

    exit_code = 1


class CorruptFile(HoptError):
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


class FilesystemError(HoptError):
    """The shared filesystem keeps failing a read (ESTALE, EIO) after retries; the CLI exits 1."""

    exit_code = 1

    def __init__(self, path: object, problem: str, attempts: int) -> None:
        super().__init__(f"{path}: {problem} ({attempts} times in a row): the shared filesystem is failing; "
                         "check its mount (`hopt doctor --dir D` tests it), then start the workers again")
        self.path = path


class LockNotExclusive(HoptError):
    """Our journal appends keep reading back void: others write while we hold the lock. Exit 1."""

    exit_code = 1

    def __init__(self, path: object, conflicts: int, lock: str) -> None:
        fix = ("use `lock: hardlink` (in the recipe, or in experiment.yaml while no worker runs)" if lock == "flock"
               else "check that every node mounts the directory the same way")
        super().__init__(f"{path}: {conflicts} of our appends in a row came after other workers' appends we had "
                         f"not read, although we held the {lock} lock: it does not exclude on this filesystem; "
                         f"{fix}; `hopt doctor --dir D` tests it. The experiment is intact: void events count for nobody")
        self.path = path
