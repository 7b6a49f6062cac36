#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: sets up what is missing, then runs every tier of tests.
# Pass pytest options through, e.g. `bash scripts/test.sh -m "not slow"` for the fast tier.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
