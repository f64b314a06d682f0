#!/usr/bin/env bash
# One-command set-up: pinned dependencies, then this project in editable mode.
# Run it inside the Python environment you want to use (a fresh venv is recommended):
#   python3 -m venv .venv && . .venv/bin/activate && bash setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }

# torch first, then torchaudio with the same torch pin: an unpinned torch pulls another build.
pip_install "torch==2.9.1"
pip_install "torch==2.9.1" "torchaudio==2.9.1"
pip_install -r requirements.txt

pip_install --no-deps -e .
"$PY" -c "import speech, dac_vae, flowae; print('setup ok: speech, dac_vae and flowae import')"
