#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one run on one node (about fifteen minutes on an H200):
#
#   bash scripts/gpu_benchmark.sh OUT [OFFICIAL_CHECKOUT] [PEAK_TFLOPS]
#
# - the training step at 256 px: fp32 eager and bf16 + channels_last + compile, batch 1, 8 and 16,
#   on one GPU; bf16 rows with MFU against PEAK_TFLOPS (the bf16 dense peak: 989 for an H100 or
#   H200 SXM);
# - the official update in the same runs at batch 1 (fp32 and against bf16), when a checkout of
#   junyanz/pytorch-CycleGAN-and-pix2pix is given;
# - CycleGAN, CUT and FastCUT side by side at batch 1, fp32 and bf16 (time and peak memory);
# - large images: peak allocated memory and s/step at 256, 512 and 1024 px, fp32 CycleGAN and bf16
#   for each objective, without and with activation checkpointing (and the estimate's error);
# - scaling over every GPU of the node (DDP, bf16 batch 8 per GPU) against one GPU;
# - the loader: one rank's images/s with its share of the node's cores as workers, against the
#   images/s the fastest step asks of it.
# Every result is a JSON file in OUT (a new folder); the last step prints the table
# (scripts/benchmark.py summary OUT).
# A dry run anywhere: SIZE=32 OVERRIDES="model.ngf=8 model.ndf=8 model.n_blocks=6" bash scripts/gpu_benchmark.sh OUT
set -uo pipefail
out=${1:?usage: bash scripts/gpu_benchmark.sh OUT [OFFICIAL_CHECKOUT] [PEAK_TFLOPS]}
official=${2:-}
peak=${3:-989}
py=${PYTHON:-.venv/bin/python}
size=${SIZE:-256}
read -r -a overrides <<< "${OVERRIDES:-}"
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
    echo "$out is not empty: give a new folder, so that no earlier result is read as this run's" >&2
    exit 2
fi
mkdir -p "$out"
if ! gpus=$($py -c "import torch; print(torch.cuda.device_count())"); then
    echo "cannot import torch with $py (set PYTHON to the environment's python)" >&2
    exit 2
fi
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpus.csv"
fi
cores=$(nproc)

step() {  # name, then the step options
    local name=$1
    shift
    echo "== $name"
    $py scripts/benchmark.py --json "$out/$name.json" step --size "$size" --steps 10 --warmup 3 --repeats 3 \
        "$@" ${overrides[@]+"${overrides[@]}"} > "$out/$name.log" 2>&1 || echo "   failed: see $out/$name.log"
}

for batch in 1 8 16; do
    compare=()
    if [ -n "$official" ] && [ "$batch" = 1 ]; then compare=(--official "$official"); fi
    step "fp32-b$batch" --batch "$batch" ${compare[@]+"${compare[@]}"}
    step "bf16-b$batch" --batch "$batch" --precision bf16 --channels-last --compile --peak-tflops "$peak" \
        ${compare[@]+"${compare[@]}"}
done
for precision in no bf16; do  # CUT and FastCUT against CycleGAN, batch 1 (the CUT paper's setting)
    step "objectives-$precision" --batch 1 --precision "$precision" --objectives cyclegan,cut,fastcut
done
for precision in no bf16; do  # each combination a fresh process: fp32 for CycleGAN, bf16 for all three
    objectives=(cyclegan)
    if [ "$precision" = bf16 ]; then objectives=(cyclegan cut fastcut); fi
    echo "== memory by crop size, $precision"
    # the overrides first: the options after them take several values each
    $py scripts/benchmark.py --json "$out/memory-$precision.json" memory ${overrides[@]+"${overrides[@]}"} \
        --size "$size" $((size * 2)) $((size * 4)) --batch 1 --objective "${objectives[@]}" --precision "$precision" \
        > "$out/memory-$precision.log" 2>&1 || echo "   failed: see $out/memory-$precision.log"
done
if [ "$gpus" -gt 1 ]; then
    echo "== bf16-b8 on $gpus GPUs"
    $py -m accelerate.commands.launch --multi_gpu --num_processes "$gpus" scripts/benchmark.py \
        --json "$out/bf16-b8-x$gpus.json" step --size "$size" --batch 8 --precision bf16 --channels-last --compile \
        --steps 10 --warmup 3 --repeats 3 --peak-tflops "$peak" ${overrides[@]+"${overrides[@]}"} \
        > "$out/bf16-b8-x$gpus.log" 2>&1 || echo "   failed: see $out/bf16-b8-x$gpus.log"
fi
workers=$(( cores / (gpus > 0 ? gpus : 1) ))
echo "== loader, $workers workers (one GPU's share of the cores; 256 px JPEGs whatever SIZE)"
$py scripts/benchmark.py --json "$out/loader.json" loader --workdir "$out/loader-data" --workers "$workers" \
    > "$out/loader.log" 2>&1 || echo "   failed: see $out/loader.log"
$py scripts/benchmark.py summary "$out" | tee "$out/summary.md"
