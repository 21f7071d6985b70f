#!/bin/bash
# One device call: install the carried wheels, run the GPU tests, then the decode suite.
#   run(command="bash bench/gpu/run_h100.sh", carry=[".devcarry"])   (extra args go to suite.py)
# A failing test does not stop the suite; SKIP_TESTS=1 skips the tests.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/isthmus-out}; mkdir -p "$OUT"
shopt -s nullglob
wheels=(.devcarry/wheels/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "no wheels in .devcarry/wheels (bitsandbytes, msgspec): see bench/README.md, GPU section" >&2
  exit 1
fi
# The device has no package index: --no-index so pip never tries to reach one.
python3 -m pip install -q --no-index --no-deps "${wheels[@]}" && \
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null || exit 1
python3 -c "import torch, triton, transformers, bitsandbytes, isthmus.engine.runner.model_runner; \
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, \
'bitsandbytes', bitsandbytes.__version__)" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
if [ -z "$SKIP_TESTS" ]; then
  python3 -m pytest tests/engine/runner/test_runner_gpu.py tests/engine/runner/test_cuda_graph.py -q -rs \
    -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -40
fi
# --line-buffered: a run stopped at its time limit still leaves every line printed so far.
python3 bench/gpu/suite.py --json "$OUT/suite.json" "$@" 2>&1 | grep --line-buffered -v "Loading weights" \
  | tee "$OUT/suite.log"
