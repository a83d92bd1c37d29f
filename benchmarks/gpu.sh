#!/usr/bin/env bash
# The GPU figures: SAM at 1024 px, batch 4, fp32 vs fp16 vs bf16, original vs SDPA attention, with and without
# checkpointing, and the Table 5 comparison (batch 1). One group per call, so that each stays short:
#   bash benchmarks/gpu.sh vit_b     # fp32, fp16, bf16; fp16 + sdpa; fp16 + checkpointing
#   bash benchmarks/gpu.sh vit_h     # the same on vit_h, one method at a time (fits 16 GB cards with checkpointing)
#   bash benchmarks/gpu.sh table5    # vit_b, batch 1, fp16: beside the paper's V100 Table 5
# Results go to $OUT_DIR (default benchmarks/results), named after the settings and the device type.
set -euo pipefail
group=${1:?usage: bash benchmarks/gpu.sh vit_b|vit_h|table5}
out=${OUT_DIR:-benchmarks/results}
bench() { peftbench bench --device cuda --image-size 1024 --warmup 2 --iters 5 --repeats 3 --out "$out" "$@"; }
case "$group" in
  vit_b|vit_h)
    extra=(); [[ $group == vit_h ]] && extra=(--one-at-a-time)
    for precision in fp32 fp16 bf16; do bench --sam "$group" --batch 4 --precision "$precision" "${extra[@]}"; done
    bench --sam "$group" --batch 4 --precision fp16 --attention sdpa "${extra[@]}"
    bench --sam "$group" --batch 4 --precision fp16 --checkpointing "${extra[@]}"
    ;;
  table5)
    bench --sam vit_b --batch 1 --precision fp16
    python benchmarks/table5.py "$out/bench_vit_b_1024px_b1_fp16_cuda.json"
    ;;
  *) echo "benchmarks/gpu.sh: unknown group '$group' (vit_b, vit_h or table5)" >&2; exit 2 ;;
esac
