#!/usr/bin/env bash
# Make a second Python environment for `stack=`: everything of the main one, except transformers 4.43.4
# (with its tokenizers and huggingface-hub) in front, for DeepSpeed's BLOOM kernel injection, which
# DeepSpeed refuses on any newer transformers.
#
#   scripts/legacy-stack.sh DIR [pip args...]       e.g. scripts/legacy-stack.sh ~/venvs/tf443
#   scripts/legacy-stack.sh DIR --no-index --find-links .whl-legacy      (offline, from wheels)
#   python -m runner -m backend=ds-inference stack=DIR ...
#
# DIR is a venv without pip of its own: a .pth file appends the main interpreter's site directories
# (torch, deepspeed, accelerate... are shared, not reinstalled) after DIR's own site-packages, which
# holds only the pinned packages and what they need beyond the main stack. PYTHON picks the main interpreter (default: python3).
set -euo pipefail
DIR=${1:?usage: $0 DIR [pip args...]}; shift
PY=${PYTHON:-python3}
"$PY" -m venv --without-pip "$DIR"
SITE=$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
  > "$SITE/zz-main-stack.pth"
# The main interpreter's pip, run inside DIR (importable through the .pth): it installs into DIR only
# what the main stack lacks or has in another version ("Not uninstalling ... outside environment").
"$DIR/bin/python" -m pip install -q "$@" transformers==4.43.4 tokenizers==0.19.1 "huggingface-hub<1.0"
"$DIR/bin/python" -c 'import transformers, deepspeed, torch; print("stack", transformers.__version__, "deepspeed", deepspeed.__version__, "torch", torch.__version__)'
