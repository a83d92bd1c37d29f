#!/usr/bin/env bash
# The GPU figures: SAM at 1024 px, batch 4, fp32 vs fp16 vs bf16, original vs SDPA attention, with and without
# checkpointing (each comparison inside one bench run), and the Table 5 comparison (batch 1). One group per call:
#   bash benchmarks/gpu.sh vit_b_precision   # fp32, fp16, bf16
#   bash benchmarks/gpu.sh vit_b_kernels     # fp16: original / SDPA attention x checkpointing off / on
#   bash benchmarks/gpu.sh vit_h_precision   # the same on vit_h, one model at a time (fits 16 GB cards)
#   bash benchmarks/gpu.sh vit_h_kernels
#   bash benchmarks/gpu.sh table5            # vit_b, batch 1, fp16: beside the paper's V100 Table 5
# Results go to $OUT_DIR (default benchmarks/results), named after the settings and the device type.
set -euo pipefail
group=${1:?usage: bash benchmarks/gpu.sh vit_b_precision|vit_b_kernels|vit_h_precision|vit_h_kernels|table5}
out=${OUT_DIR:-benchmarks/results}
bench() { peftbench bench --device cuda --image-size 1024 --warmup 2 --iters 3 --repeats 3 --out "$out" "$@"; }
case "$group" in
  vit_b_precision) bench --sam vit_b --batch 4 --precision fp32,fp16,bf16 ;;
  vit_b_kernels) bench --sam vit_b --batch 4 --precision fp16 --attention original,sdpa --checkpointing off,on ;;
  vit_h_precision) bench --sam vit_h --batch 4 --precision fp32,fp16,bf16 --one-at-a-time ;;
  vit_h_kernels)
    bench --sam vit_h --batch 4 --precision fp16 --attention original,sdpa --checkpointing off,on --one-at-a-time ;;
  table5)
    bench --sam vit_b --batch 1 --precision fp16
    python benchmarks/table5.py "$out/bench_vit_b_1024px_b1_fp16_cuda.json"
    ;;
  *) echo "benchmarks/gpu.sh: unknown group '$group' (vit_b_precision, vit_b_kernels, vit_h_precision," \
          "vit_h_kernels or table5)" >&2; exit 2 ;;
esac
