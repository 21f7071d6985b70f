#!/bin/bash
# Every GPU figure of issue 14 in one command on an H100/H200 (budget: under 8 minutes):
#   bash bench/gpu/run.sh            (on the device tool: run(command="bash bench/gpu/run.sh",
#                                     carry=[".devcarry"], timeout_s=590))
# 1. the GPU tests (pytest -m gpu over tests/engine, CUDA graphs and kernels included);
# 2. tensor parallelism with CUDA graphs through the TP rewrite: torchrun over every visible GPU
#    that divides the tiny model's 4 heads (TP=1 on one GPU), graphs vs eager greedy tokens;
# 3. bench/gpu/full.py: the 7B-shaped checkpoint (written on the GPU), ours bf16 b1/b32/b64,
#    nf4 b1, decode after a 2,048-token prompt, first token at 128/2,048/4,000 and 32 x 128,
#    a torch.profiler summary per case, and transformers dynamic and static+compile;
# one table at the end; logs and JSON under $OUT. A failing step does not stop the next.
# Wheels the device image lacks (bitsandbytes, msgspec) come from .devcarry/wheels when present.
# Time limits per step (seconds): TEST_S, TP_S, FULL_S.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/isthmus-out}; mkdir -p "$OUT"
cd "$(dirname "$0")/../.." || exit 1
shopt -s nullglob
wheels=(.devcarry/wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps "${wheels[@]}" || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
python3 -c "import torch, triton, transformers, bitsandbytes, isthmus.engine.runner.model_runner; \
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, \
'bitsandbytes', bitsandbytes.__version__)" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
status=0
t0=$(date +%s)
if [ -z "$SKIP_TESTS" ]; then
  timeout "${TEST_S:-75}" python3 -m pytest tests/engine -m gpu -q -rs -p no:cacheprovider \
    --continue-on-collection-errors 2>&1 \
    | tee "$OUT/pytest.log" | tail -25 || status=1
fi
echo "tests: $(( $(date +%s) - t0 )) s"
ngpu=$(nvidia-smi -L | wc -l)
tp=1; for n in 4 2; do if [ "$ngpu" -ge "$n" ]; then tp=$n; break; fi; done
timeout "${TP_S:-45}" torchrun --standalone --nproc-per-node="$tp" bench/gpu/tp_graphs.py \
  --json "$OUT/tp_graphs.json" 2>&1 | grep -v "^W1\|^\*\*\*" | tee "$OUT/tp_graphs.log" | tail -5 || status=1
echo "tp graphs: $(( $(date +%s) - t0 )) s"
timeout "${FULL_S:-330}" python3 bench/gpu/full.py --json "$OUT/full.json" "$@" 2>&1 \
  | grep --line-buffered -v "Loading weights" | tee "$OUT/full.log" || status=1
echo "total: $(( $(date +%s) - t0 )) s"
exit $status
