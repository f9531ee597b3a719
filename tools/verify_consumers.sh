#!/usr/bin/env bash
# Verify the committed golden store on every torch release and regenerate docs/compat/ and
# docs/compatibility.md (docs/compat/README.md). Each release's venv is $QBC_VENVS/torch-<release>
# (torch + qbc's dependencies; qbc itself comes from this checkout via PYTHONPATH).
#
#   QBC_VENVS=/work/venvs tools/verify_consumers.sh                 # all nine releases
#   QBC_VENVS=/work/venvs tools/verify_consumers.sh 2.8.0 2.10.0    # some; the others' files stay
#
# Prints each release's verify time. Verify runs with -n "${QBC_WORKERS:-2}".
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
venvs="${QBC_VENVS:-$repo/.nox/venvs}"
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(2.6.0 2.7.1 2.8.0 2.9.1 2.10.0 2.11.0 2.12.1 2.13.0 2.14.1)
out="$(mktemp -d)"
for v in "${releases[@]}"; do
  python="$venvs/torch-$v/bin/python"
  start=$(date +%s)
  # qbc's pytest plugin comes from its entry point when qbc is installed in the venv (nox);
  # from PYTHONPATH alone it must be named (both at once: "Plugin already registered")
  plugin=()
  "$python" -c "import importlib.metadata as m, sys
sys.exit(not any(e.name == 'qbc' for e in m.entry_points(group='pytest11')))" \
    || plugin=(PYTEST_PLUGINS=harness.pytest_plugin)
  # exit status 1 means some check failed: the results file still records every check
  env "${plugin[@]}" PYTHONPATH="$repo" nice -n 10 "$python" -m harness.cli verify -n "${QBC_WORKERS:-2}" --downstream none \
    --json "$out/torch-$v.json" > "$out/torch-$v.txt" || true
  echo "torch $v: verify $(( $(date +%s) - start )) s, $(tail -1 "$out/torch-$v.txt")"
  PYTHONPATH="$repo" "$python" -m harness.cli report --format results \
    --results "$out/torch-$v.json" -o "docs/compat/torch-$v.json"
done
args=()
for f in $(ls docs/compat/torch-*.json | sort -V); do args+=(--results "$f"); done
PYTHONPATH="$repo" "$venvs/torch-${releases[0]}/bin/python" -m harness.cli report --format md \
  "${args[@]}" -o docs/compatibility.md
rm -rf "$out"
