#!/usr/bin/env bash
# Build the folder that travels with a GPU device check (tools/device_check.sh), on this machine.
#
# The GPU machine has Python 3.12 with torch, torchvision, pandas, seaborn, matplotlib and tqdm, but
# no network and no notebook stack. This script puts into carry/ (git-ignored):
#   carry/wheels/                 papermill, nbclient, nbformat, ipykernel and the pure-Python (or
#                                 manylinux x86-64, CPython 3.12) packages they need that the GPU
#                                 image lacks;
#   carry/cifar10-jpeg.tar.xz     the JPEG CIFAR-10 copy as one compressed archive (~20 MB instead of
#                                 60,000 files).
# Then, where a python3.12 exists here, it rehearses the device's install (same pip flags, an empty
# --target, PYTHONPATH) in a throw-away 3.12 venv holding only the image's packages, and executes a
# one-cell notebook with papermill. Skip that with KDNB_CARRY_VERIFY=0.
# Usage, from the repository root:
#   tools/make_device_carry.sh /path/to/cifar10-jpeg.tar.xz   # or a cifar10-jpeg/ folder to pack
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-${KDNB_DATA_ARCHIVE:-}}
[ -n "$src" ] || { echo "usage: $0 DATA (a cifar10-jpeg.tar.xz archive or a cifar10-jpeg/ folder)" >&2; exit 2; }
mkdir -p carry/wheels
rm -f carry/cifar10-jpeg.tar.xz # a copy of a read-only archive is read-only too
if [ -f "$src" ]; then
  cp "$src" carry/cifar10-jpeg.tar.xz
elif [ -d "$src/train" ] && [ -d "$src/test" ]; then
  tar -C "$(dirname "$src")" -cJf carry/cifar10-jpeg.tar.xz "$(basename "$src")"
else
  echo "$src: neither an archive nor a folder with train/ and test/" >&2; exit 2
fi

# Packages the GPU image already has (its python3's site-packages): never shadow them, since
# PYTHONPATH entries come before site-packages there. Names normalised (lower case, '_').
# The first group is what the notebook stack needs of them (the rehearsal below installs those).
present_small='attrs certifi charset_normalizer click idna packaging psutil pygments python_dateutil pyyaml
requests six tqdm typing_extensions urllib3'
present="$present_small numpy pandas matplotlib seaborn scipy pillow jinja2 markupsafe setuptools wheel
pytest pluggy iniconfig torch torchvision"
# papermill declares aiohttp for Python 3.12 only but never imports it (checked in 2.7.0): leave
# it and its dependencies out. pip evaluates markers with the interpreter that runs the download,
# so whether they come at all depends on it; dropping them makes the set the same either way.
skip='aiohttp aiohappyeyeballs aiosignal frozenlist multidict propcache yarl'

# Prefer a real 3.12 interpreter (markers evaluated for 3.12; KDNB_CARRY_PYTHON, python3.12, a
# pyenv 3.12); else the current python3 with the target pinned by flags. A pyenv shim for a
# version that is not selected exists but fails, hence the probe.
py=
for cand in ${KDNB_CARRY_PYTHON:-} python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
  if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py=$cand; break; fi
done
echo "downloading with ${py:-python3 (target pinned to CPython 3.12)}"
target_flags=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64
  --platform manylinux2010_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
rm -f carry/wheels/*.whl
"${py:-python3}" -m pip download -q --only-binary=:all: "${target_flags[@]}" \
  -d carry/wheels papermill nbclient nbformat ipykernel 2>&1 | grep -v 'is ignored' || true

norm() { sed -E 's/-[0-9].*//; s/[-.]+/_/g' <<<"$1" | tr '[:upper:]' '[:lower:]'; }
for whl in carry/wheels/*.whl; do
  name=$(norm "$(basename "$whl")")
  for drop in $present $skip; do
    if [ "$name" = "$drop" ]; then rm -f "$whl"; break; fi
  done
done
names=$(for whl in carry/wheels/*.whl; do norm "$(basename "$whl")"; done)
for need in papermill nbclient nbformat ipykernel ipython jupyter_client jupyter_core traitlets pyzmq tornado; do
  grep -qx "$need" <<<"$names" || { echo "carry/wheels lacks $need" >&2; exit 1; }
done
dups=$(sort <<<"$names" | uniq -d)
[ -z "$dups" ] || { echo "two versions of one package in carry/wheels: $dups" >&2; exit 1; }
echo "carry/wheels: $(wc -l <<<"$names") wheels: $(tr '\n' ' ' <<<"$names")"

if [ "${KDNB_CARRY_VERIFY:-1}" != 0 ] && [ -n "$py" ]; then
  # The device's install, rehearsed: a venv with only (some of) the image's packages, the wheels
  # into an empty --target with the device's flags, then papermill runs a python3 kernel.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$py" -m venv "$tmp/venv"
  # shellcheck disable=SC2086  # one word per package
  "$tmp/venv/bin/python" -m pip install -q $present_small 2> >(grep -v "is ignored" >&2)
  "$tmp/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$tmp/site" carry/wheels/*.whl
  printf '%s\n' '{"cells":[{"cell_type":"code","execution_count":null,"id":"a","metadata":{},"outputs":[],' \
    '"source":["import sys, papermill; print(sys.version_info[:2], papermill.__version__)"]}],' \
    '"metadata":{"kernelspec":{"name":"python3","display_name":"Python 3","language":"python"}},' \
    '"nbformat":4,"nbformat_minor":5}' >"$tmp/probe.ipynb"
  (cd "$tmp" && PYTHONPATH="$tmp/site" "$tmp/venv/bin/python" - <<'EOF'
import json, subprocess, sys
import papermill, ipykernel, nbclient
from jupyter_client.kernelspec import KernelSpecManager
spec = KernelSpecManager().get_kernel_spec("python3")
print("kernelspec python3:", spec.argv[:3])
check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
print("pip check:", check.stdout.strip() or check.stderr.strip())
papermill.execute_notebook("probe.ipynb", "probe.out.ipynb", kernel_name="python3", progress_bar=False)
out = json.load(open("probe.out.ipynb"))["cells"][0]["outputs"][0]["text"]
print("papermill probe:", "".join(out).strip())
EOF
  ) || { echo "verification in a python3.12 venv failed" >&2; exit 1; }
fi
du -sh carry
echo "carry/ ready: pass carry=[\"carry\"] to the device run and start it with tools/device_check.sh"
