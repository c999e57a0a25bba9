#!/usr/bin/env bash
# fp32 / bf16 / int8 / int8+bf16 on ONNX Runtime and OpenVINO, side by side in one `rdad bench`
# run per backbone (256 px, batch 8), then the same with oneDNN capped at AVX512_CORE_VNNI (a
# Cascade Lake-class CPU: VNNI, no BF16) and at AVX2 (neither): bf16 must be refused there and
# nothing else may get slower. The header of each
# run names the CPU and its AMX / AVX512-BF16 / VNNI units. On an AMX machine this one command
# checks the targets of docs/performance.md, "bf16 and AMX":
#
#   benchmarks/cpu_precision.sh [OUT]      # OUT: bench-models (models built once, reused)
#
# Untrained graphs with a seeded random teacher (benchmarks/make_models.py): speed does not depend
# on the weights. Figures: OUT/bench-BACKBONE[-CAP].json and the tables on stdout.
set -euo pipefail
out=${1:-bench-models}
backbones=${BACKBONES:-resnet18,wide_resnet50_2}
for b in ${backbones//,/ }; do
  [[ -f $out/$b/model_int8.onnx ]] || python benchmarks/make_models.py --out "$out" --backbones "$b" --int8
done
for cap in "" AVX512_CORE_VNNI AVX2; do
  for b in ${backbones//,/ }; do
    echo "== $b${cap:+, ONEDNN_MAX_CPU_ISA=$cap}"
    ONEDNN_MAX_CPU_ISA=$cap rdad bench "$out/$b/model.onnx" "$out/$b/model_int8.onnx" \
      --runtimes onnxruntime-cpu,openvino-cpu --cpu-precisions fp32,bf16 --batch-sizes 8 \
      --repeats "${REPEATS:-3}" --latency-runs "${LATENCY_RUNS:-5}" --no-memory \
      --json "$out/bench-$b${cap:+-${cap,,}}.json"
  done
done
