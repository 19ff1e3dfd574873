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
