"""The seeds hopt derives: the same arguments give the same numbers in every process, different ones differ."""
from __future__ import annotations

import subprocess
import sys

from hopt_cli.seeds import decision_rng, trainable_seed
from tests.conftest import REPO


def test_a_decision_draws_the_same_numbers_for_the_same_seed_member_interval_and_attempt():
    assert decision_rng(7, 3, 5, 0).random(4).tolist() == decision_rng(7, 3, 5, 0).random(4).tolist()
    draws = {tuple(decision_rng(*args).random(2)) for args in [(7, 3, 5, 0), (8, 3, 5, 0), (7, 4, 5, 0),
                                                                (7, 3, 6, 0), (7, 3, 5, 1)]}
    assert len(draws) == 5


def test_a_trainable_seed_is_the_same_in_another_process_and_differs_by_member_and_interval():
    here = [trainable_seed(0, m, t) for m in range(3) for t in range(3)]
    program = ("from hopt_cli.seeds import trainable_seed\n"
               "print([trainable_seed(0, m, t) for m in range(3) for t in range(3)])")
    there = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=True)
    assert there.stdout.strip() == str(here)
    assert len(set(here)) == 9 and all(0 <= s < 2**32 for s in here)
