"""`hopt status` asks the policy how many last scores make a member's robust score, never a setting by name."""
from __future__ import annotations

import dataclasses

from hopt_cli.policies import make_policy, robust_window


def test_the_window_is_what_the_policy_judges_a_member_by():
    assert robust_window(make_policy("romul")) == 2
    assert robust_window(make_policy("romul", {"ready": 4})) == 4
    assert robust_window(make_policy("de", {"ready": 3})) == 3
    assert robust_window(make_policy("pbt", {"ready": 5})) == 5
    assert robust_window(dataclasses.replace(make_policy("romul", {"ready": 4}), robust=False)) == 1  # its last score
    assert robust_window(make_policy("random")) == 2  # judges nobody: status shows the same mean as before
