#!/usr/bin/env bash
# Serve each benchmark model with default settings on a loopback port and load it with
# benchmarks/load.py (concurrency 1, 4, 16, 64), next to raw ONNX Runtime in the same run.
#   bash benchmarks/run.sh [IMAGES_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-../shared/datasets/mvtec_bottle/test}
OUT=${2:-bench-results}
MODELS=${MODELS:-bench-models}
PORT=${PORT:-8765}
mkdir -p "$OUT"
[ -f "$MODELS/resnet18/model.onnx" ] || python benchmarks/make_models.py --out "$MODELS"
for name in ${BACKBONES:-wide_resnet50_2 resnet18}; do
  dir=$(mktemp -d)
  cp "$MODELS/$name/model.onnx" "$dir/$name.onnx"
  rdad serve --model-dir "$dir" --host 127.0.0.1 --port "$PORT" --no-access-log \
    > "$OUT/serve-$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
    sleep 1
  done
  echo "== $name"
  python benchmarks/load.py --url "http://127.0.0.1:$PORT" --model-file "$dir/$name.onnx" \
    --images "$IMAGES" --json "$OUT/$name.json" ${LOAD_ARGS:-} | tee "$OUT/$name.md"
  kill -TERM "$pid"
  wait "$pid" || true
  rm -rf "$dir"
done
