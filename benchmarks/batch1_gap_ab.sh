#!/usr/bin/env bash
# A/B of the in-service batch-1 inference against a bare session, with and without the service's
# CPU thread budget (OpenCV single-threaded in the image pool): two servers on one model, three
# interleaved rounds of benchmarks/load.py at concurrency 1. Figures in README (Speed).
#   bash benchmarks/batch1_gap_ab.sh MODEL.onnx [IMAGES_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; IMAGES=${2:-../shared/datasets/mvtec_bottle/test}
dir=$(mktemp -d); cp "$MODEL" "$dir/model.onnx"
export RDAD_RUNTIME=onnxruntime  # the bare session in load.py is ONNX Runtime
rdad serve --model-dir "$dir" --host 127.0.0.1 --port 8765 --no-access-log > "$dir/after.log" 2>&1 &
after=$!
python benchmarks/serve_opencv_pool.py serve --model-dir "$dir" --host 127.0.0.1 --port 8766 \
  --no-access-log > "$dir/before.log" 2>&1 &
before=$!
trap 'kill $after $before 2>/dev/null; wait; rm -rf "$dir"' EXIT
for port in 8765 8766; do
  for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 1; done
done
for round in 1 2 3; do
  for port in 8766 8765; do
    [ "$port" = 8766 ] && echo "== round $round: OpenCV default pool" || echo "== round $round: thread budget"
    python benchmarks/load.py --url "http://127.0.0.1:$port" --model-file "$dir/model.onnx" \
      --images "$IMAGES" --concurrency 1 --requests 16 --raw-runs 12 2>&1 | grep 'batch-1 breakdown'
  done
done
