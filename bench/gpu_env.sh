# Sourced by the bench/gpu_*.sh scripts: the pinned wheels carried in .whl/ (where the GPU machine lacks
# or differs from them) on PYTHONPATH ahead of the repository, offline, and the card named in the log.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
