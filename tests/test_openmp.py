"""unmask chooses OpenMP's spin count before torch loads, unless the user chose a waiting policy."""

import os
import subprocess
import sys

import pytest

OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def spin_count_after_import(**variables: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES} | variables
    code = "import os, unmask, torch; print(os.environ.get('GOMP_SPINCOUNT', 'unset'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize(("variables", "expected"), [
    ({}, "1000"),
    ({"GOMP_SPINCOUNT": "50"}, "50"),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "unset"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "unset"),
])
def test_spin_count_default_leaves_the_users_choice(variables, expected):
    assert spin_count_after_import(**variables) == expected
