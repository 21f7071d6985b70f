#!/bin/bash
# One device call: install the carried wheels, run the GPU tests, then the decode suite.
#   run(command="bash bench/gpu/run_h100.sh", carry=[".devcarry"])   (extra args go to suite.py)
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/isthmus-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .devcarry/wheels/*.whl && \
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
if [ -z "$SKIP_TESTS" ]; then
  python3 -m pytest tests/engine/test_runner_gpu.py tests/engine/test_cuda_graph.py -q -rs \
    -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -40
fi
python3 bench/gpu/suite.py --json "$OUT/suite.json" "$@" 2>&1 | grep -v "Loading weights" | tee "$OUT/suite.log"
