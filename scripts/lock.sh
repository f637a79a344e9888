#!/usr/bin/env bash
# Rewrites requirements.lock: every package `make` installs (the project with its torch and test extras),
# resolved by pip from pyproject.toml's ranges without installing anything. Run it (`make lock`) after
# changing a dependency, then `make test`, and commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
report=$(mktemp)
trap 'rm -f "$report"' EXIT
# (the local wheel folders this machine's pip.conf names warn once per package: kept out of the output)
"$PY" -m pip install -q --dry-run --ignore-installed --report "$report" -e '.[torch,test]' 2> >(grep -v "is ignored" >&2)
"$PY" - "$report" > requirements.lock <<'PY'
import json, sys
print("# Exact versions `make` installs (scripts/lock.sh writes this file from pyproject.toml's ranges).")
print("# torch's local label (+cpu) is dropped so that any build of that version satisfies it.")
packages = json.load(open(sys.argv[1]))["install"]
for meta in sorted((p["metadata"] for p in packages), key=lambda m: m["name"].lower()):
    if meta["name"] != "xlit_jax":
        print(f"{meta['name']}=={meta['version'].split('+')[0]}")
PY
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
