#!/usr/bin/env bash
# Create a virtual environment with a Python >= 3.12: first one on PATH, then any under `pyenv root`.
set -euo pipefail
venv=${1:-.venv}
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
candidates=()
for name in python3.14 python3.13 python3.12 python3 python; do
  path=$(command -v "$name" 2>/dev/null) && candidates+=("$path")
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for dir in $(ls -d "$root"/versions/3.* 2>/dev/null | sort -V -r); do candidates+=("$dir/bin/python3"); done
fi
for py in "${candidates[@]}"; do
  if ok "$py"; then
    if [ -x "$venv/bin/python" ] && ok "$venv/bin/python"; then exit 0; fi
    echo "Creating $venv with $py ($("$py" --version))"
    "$py" -m venv "$venv"
    exit 0
  fi
done
echo "error: no Python >= 3.12 found on PATH or under \`pyenv root\`; install one (e.g. \`pyenv install 3.12\`)." >&2
exit 1
