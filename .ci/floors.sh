#!/usr/bin/env bash
# CI, once per change of setup.cfg's requirements: the oldest versions setup.cfg allows, in a venv of their
# own, run the torch trainables' tests (tests/workers). Every `name>=X` of install_requires and of the
# extras the trainables need (digits, lightning, rl; pytest from test) is installed as `name==X`, so a floor
# too low for the code fails here, not on a user's cluster. FLOORS_VENV names the venv's folder.
# About 10 minutes, measured 2026-12-06 on 2 busy shared cores with no pip cache: the install (5.2 GB
# installed: torch 2.3.0 and its nvidia-* CUDA wheels) and the fast tests 8 min 27 s, Lightning's slow
# tests 1 min 18 s more.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FLOORS_VENV:-${TMPDIR:-/tmp}/hopt-floors-venv}

floors=$(python3 - <<'PY'
import configparser
import re

config = configparser.ConfigParser()
config.read("setup.cfg")
wanted = [config["options"]["install_requires"]]
extras = config["options.extras_require"]
wanted += [extras["digits"], extras["lightning"], extras["rl"]]
wanted += [line for line in extras["test"].splitlines() if line.strip().startswith("pytest")]
pins = {}
for line in "\n".join(wanted).splitlines():
    line = line.split("#")[0].strip()
    found = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*)", line)
    if found:
        pins[found[1]] = f"{found[1]}=={found[2]}"
    elif line:
        raise SystemExit(f"setup.cfg: {line!r} has no floor (name>=version) to install")
print(" ".join(pins.values()))
PY
)
echo "== floors: $floors"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet $floors
"$venv/bin/pip" list --format=freeze \
    | grep -iE '^(torch|numpy|lightning|click|cloudpickle|pyyaml|scikit-learn|gymnasium|pytest)=='
echo "== tests/workers at the floors (the fast ones, and Lightning's, which are all slow)"
PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -p no:cacheprovider -q tests/workers
PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -p no:cacheprovider -q -m slow tests/workers/test_lightning_digits.py
