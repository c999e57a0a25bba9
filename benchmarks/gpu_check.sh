#!/usr/bin/env bash
# One-shot GPU check: model-only throughput (torch and ONNX Runtime), decode rates, and the service
# on the CUDA provider under load; one table (stdout and RESULTS/gpu_check.md) plus
# RESULTS/gpu_check.json. Made for a borrowed machine without a package index: the service's
# wheels come from .gpu/ (see benchmarks/gpu_wheels.sh; onnxruntime-gpu travels in parts that are
# reassembled here). Without a GPU (or with --cpu-small) it runs the same steps on the CPU with a
# small model, and says so: CI runs that mode.
#   bash benchmarks/gpu_check.sh [--cpu-small]      RESULTS=dir (default $OUT, else gpu-results)
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
RESULTS=${RESULTS:-${OUT:-gpu-results}}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/rdad-gpu-check.XXXX)}
BUDGET_S=${GPU_CHECK_BUDGET_S:-} # optional load steps stop when it runs out (GPU lease)
PY=${PYTHON:-python3}
PORT=${PORT:-8790}
GPU_DIR=${GPU_DIR:-.gpu} # what benchmarks/gpu_wheels.sh downloaded
mkdir -p "$RESULTS" "$WORK"
RESULTS=$(cd "$RESULTS" && pwd) WORK=$(cd "$WORK" && pwd)
SKIPPED="$RESULTS/skipped.txt"
: >"$SKIPPED"
say() { echo "gpu_check [$(($(date +%s) - START))s]: $*"; }
skip() { echo "$*" >>"$SKIPPED"; say "SKIPPED: $*"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

MODE=cpu
if [ "${1:-}" != "--cpu-small" ] && nvidia-smi -L >/dev/null 2>&1; then MODE=gpu; fi
# On a GPU the lease is short (480 s by default); the CPU mode (CI) runs every step.
[ -n "$BUDGET_S" ] || BUDGET_S=$([ $MODE = gpu ] && echo 480 || echo 86400)
say "mode $MODE (results in $RESULTS, scratch in $WORK)"
[ $MODE = gpu ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# --- packages: service wheels, reassembled onnxruntime-gpu, rdad itself -------------------------
SITE=$WORK/site
mkdir -p "$SITE"
if ! $PY -c "import fastapi, uvicorn, pydantic_settings, multipart" 2>/dev/null; then
  if ls "$GPU_DIR"/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$GPU_DIR"/wheels/*.whl ||
      skip "service wheels failed to install"
  else
    skip "service packages (fastapi, uvicorn, pydantic-settings, python-multipart): not installed and no $GPU_DIR/wheels"
  fi
fi
ort_has_cuda() {
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" $PY -c \
    "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null
}
if [ $MODE = gpu ] && ! ort_has_cuda; then
  PARTS_DIR=${GPU_PARTS_DIR:-/tmp/rdad-parts}
  sums=""
  for f in "$GPU_DIR/parts/SHA256SUMS" "$PARTS_DIR/SHA256SUMS"; do
    [ -f "$f" ] && sums=$(readlink -f "$f") && break
  done
  if [ -n "$sums" ]; then
    wheel=$(awk '{print $2}' "$sums")
    mkdir -p "$WORK/ort"
    : >"$WORK/ort/$wheel"
    found=0
    for i in $(seq -f %02g 0 99); do # parts in order, from whichever folder holds each
      part=""
      for d in "$GPU_DIR/parts" "$PARTS_DIR"; do
        [ -f "$d/$wheel.part$i" ] && part="$d/$wheel.part$i" && break
      done
      [ -z "$part" ] && break
      cat "$part" >>"$WORK/ort/$wheel"
      found=$((found + 1))
    done
    if (cd "$WORK/ort" && sha256sum -c --quiet "$sums"); then
      $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WORK/ort/$wheel" ||
        skip "onnxruntime-gpu failed to install"
    else
      skip "onnxruntime-gpu: parts missing or corrupt ($found found)"
    fi
  else
    skip "onnxruntime-gpu: no parts ($GPU_DIR/parts or \$GPU_PARTS_DIR); ONNX Runtime CUDA rows and the service on CUDA"
  fi
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ $MODE = gpu ]; then
  # CUDA/cuDNN from the nvidia-* wheels next to torch, for onnxruntime-gpu too (it also tries
  # onnxruntime.preload_dlls(), which the service calls; this makes the check independent of it).
  NVLIBS=$($PY -c "import glob, os, site; print(':'.join(sorted({d for sp in site.getsitepackages() for d in glob.glob(os.path.join(sp, 'nvidia', '*', 'lib'))})))")
  export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if ! (cd "$WORK" && $PY -c "import rdad.service.settings" 2>/dev/null); then
  # The tree's package-dir mapping (rdad.model -> model/, rdad.service -> service/) as links.
  PKG=$WORK/pkg/rdad
  mkdir -p "$PKG"
  for f in rdad/*; do ln -sfn "$PWD/$f" "$PKG/$(basename "$f")"; done
  ln -sfn "$PWD/model" "$PKG/model"
  ln -sfn "$PWD/service" "$PKG/service"
  export PYTHONPATH="$WORK/pkg:$PYTHONPATH"
fi
# From $WORK: the tree's own rdad/ (without model/ and service/) must not shadow the package.
(cd "$WORK" && $PY -c "import rdad, onnxruntime as o; print('rdad from', rdad.__file__, '| onnxruntime', o.__version__, o.get_available_providers())")
SERVICE_OK=1
(cd "$WORK" && $PY -c "import rdad.service.app") || SERVICE_OK=0

# --- models -----------------------------------------------------------------------------------
if [ $MODE = gpu ]; then
  BACKBONE=wide_resnet50_2 SIZE=256 BATCHES=1,8,32,64,128 BENCH_S=0.8 MAXB=64 LOAD_S=6 STEP_S=240
  DEVICE=cuda CONCS="64 256" DECODE_ARGS="--gpu --count 32 --seconds 1.5"
else
  BACKBONE=resnet18 SIZE=64 BATCHES=1,4 BENCH_S=0.2 MAXB=8 LOAD_S=2 STEP_S=900
  DEVICE=cpu CONCS="4 8" DECODE_ARGS="--count 4 --seconds 0.2 --workers 2"
  say "no GPU: small CPU mode (resnet18 at 64 px, short runs); figures are not GPU figures"
fi
MODELS=$WORK/models
say "exporting $BACKBONE at $SIZE px (random teacher; fp32 and fp16)"
timeout "$STEP_S" $PY benchmarks/make_models.py --out "$MODELS" --backbones "$BACKBONE" --image-size "$SIZE" \
  --precisions fp32,fp16 --device "$DEVICE" 2>&1 | grep -E "parity|wrote|Error" || true
FP32=$MODELS/$BACKBONE/model.onnx FP16=$MODELS/$BACKBONE-fp16/model.onnx
[ -f "$FP32" ] && [ -f "$FP16" ] || { say "export failed"; exit 1; }

# --- model-only throughput --------------------------------------------------------------------
say "model-only throughput"
[ -n "${SKIP_MODEL_BENCH:-}" ] || timeout "$STEP_S" $PY benchmarks/gpu_bench.py --device "$DEVICE" --backbone "$BACKBONE" --image-size "$SIZE" \
  --batch-sizes "$BATCHES" --seconds "$BENCH_S" --fp32 "$FP32" --fp16 "$FP16" \
  --json "$RESULTS/bench.json" ${BENCH_EXTRA:-} || skip "model-only benchmark failed"

# --- decode -----------------------------------------------------------------------------------
say "decode rates"
NVIMG=$WORK/nvimg
DECODE_ENV=()
if [ $MODE = gpu ] && ls "$GPU_DIR"/optional/*.whl >/dev/null 2>&1; then
  # Own folder first on the path: these wheels ship a regular `nvidia` package.
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$NVIMG" "$GPU_DIR"/optional/*.whl &&
    DECODE_ENV=(PYTHONPATH="$NVIMG:$PYTHONPATH"
      LD_LIBRARY_PATH="$NVIMG/nvidia/cu13/lib:$NVIMG/nvidia/nvimgcodec:${LD_LIBRARY_PATH:-}")
elif [ $MODE = gpu ]; then
  skip "nvImageCodec GPU decode: no $GPU_DIR/optional wheels"
fi
# shellcheck disable=SC2086
# SKIP_DECODE: only write the load-test images (rates measured too briefly to report).
[ -n "${SKIP_DECODE:-}" ] && DECODE_ARGS="--count 32 --seconds 0.05"
env "${DECODE_ENV[@]}" timeout "$STEP_S" $PY benchmarks/gpu_decode.py --images-out "$WORK/images" \
  --json "$RESULTS/decode.json" $DECODE_ARGS || skip "decode benchmark failed"

# --- the service under load -------------------------------------------------------------------
serve() { # serve PORT MODEL_DIR LOG [MORE FLAGS]
  # --runtime onnxruntime: this check measures ONNX Runtime (CUDA EP on a GPU); on a CPU host with
  # OpenVINO installed, `auto` would otherwise pick whichever runtime was faster at warm-up.
  (cd "$WORK" && exec $PY -m rdad serve --model-dir "$2" --device "$DEVICE" --runtime onnxruntime --max-batch-size "$MAXB" \
    --port "$1" --no-access-log --log-level warning "${@:4}" >"$3" 2>&1) &
  echo $!
}
free_port() { # a loopback port nothing listens on right now
  $PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}
wait_ready() { # wait_ready PORT PID
  for _ in $(seq 1 $((STEP_S * 2))); do
    kill -0 "$2" 2>/dev/null || return 1
    $PY -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$1/readyz').status_code != 200)" \
      2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}
wait_workers() { # wait_workers PORT COUNT: /readyz is one worker's; every worker's model is ready
  for _ in $(seq 1 $((STEP_S * 2))); do
    $PY -c "import httpx, sys; t = httpx.get('http://127.0.0.1:$1/metrics').text
sys.exit(sum(l.startswith('rdad_model_info{') and 'state=\"ready\"' in l and l.endswith(' 1.0')
             for l in t.splitlines()) < $2)" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}
load() { # load NAME URLS IMAGES CONCURRENCY FILES [WORKERS]
  timeout $((LOAD_S * 4 + 90)) $PY benchmarks/gpu_load.py --url "$2" --images "$WORK/images/$3" --concurrency "$4" \
    --files-per-request "$5" --seconds "$LOAD_S" --processes "$LOAD_PROCS" --workers "${6:-1}" \
    --json "$RESULTS/load-$1.json" | tail -n1
}
LOAD_PROCS=$([ $MODE = gpu ] && echo 6 || echo 1)
if [ $SERVICE_OK = 0 ]; then
  skip "service load test: the service cannot be imported here"
elif [ $MODE = gpu ] && ! ort_has_cuda; then
  skip "service load test on CUDA: onnxruntime-gpu is not installed"
else
  SERVE_DIR=$WORK/serve
  mkdir -p "$SERVE_DIR"
  cp "$FP16" "$SERVE_DIR/model.onnx"
  t0=$(date +%s)
  pid=$(serve "$PORT" "$SERVE_DIR" "$RESULTS/serve.log")
  if [ $MODE = gpu ] && ! wait_ready "$PORT" "$pid"; then
    # Keep the reason, then measure anyway under the lenient policy (it says where it runs).
    skip "service with --device cuda did not become ready: $(grep -m1 -E 'RDAD_DEVICE|Error' "$RESULTS/serve.log")"
    tail -n 20 "$RESULTS/serve.log"
    kill -TERM "$pid" 2>/dev/null
    DEVICE=auto
    t0=$(date +%s)
    pid=$(serve "$PORT" "$SERVE_DIR" "$RESULTS/serve-auto.log")
  fi
  if wait_ready "$PORT" "$pid"; then
    say "service ready on $DEVICE after $(($(date +%s) - t0)) s (load + warm-up)"
    $PY -c "import httpx, json; print(json.dumps({'readyz': httpx.get('http://127.0.0.1:$PORT/readyz').json(), 'models': httpx.get('http://127.0.0.1:$PORT/models').json()['models'][0]}))" \
      >"$RESULTS/service-info.json"
    $PY -c "import json; m=json.load(open('$RESULTS/service-info.json'))['models']; print('serving on', m['provider'], 'placement', m['node_placement'])"
    for c in $CONCS; do
      load "jpeg256-c$c" "http://127.0.0.1:$PORT" jpeg256 "$c" 1
      [ "$(left)" -gt 60 ] && load "png900-c$c" "http://127.0.0.1:$PORT" png900 "$c" 1
    done
    c=${CONCS##* }
    [ "$(left)" -gt 40 ] && load "jpeg256-c$c-f8" "http://127.0.0.1:$PORT" jpeg256 "$((c / 8))" 8
    $PY -c "import httpx; print(httpx.get('http://127.0.0.1:$PORT/metrics').text)" |
      grep -E "^rdad_batch_size_(sum|count)" >"$RESULTS/batch-sizes.txt" || true
    if [ "$(left)" -gt 45 ]; then
      # The second port is found now, not derived from PORT: the load clients' own connections
      # take ephemeral ports too, and PORT + 1 was one of them once ("address already in use").
      port2=$(free_port)
      pid2=$(serve "$port2" "$SERVE_DIR" "$RESULTS/serve2.log")
      if wait_ready "$port2" "$pid2"; then
        load "jpeg256-c$c-2servers" "http://127.0.0.1:$PORT,http://127.0.0.1:$port2" jpeg256 "$c" 1
      else
        skip "second server did not become ready (see serve2.log)"
        tail -n 5 "$RESULTS/serve2.log"
      fi
      kill -TERM "$pid2" 2>/dev/null
    else
      skip "two servers sharing the device: out of time budget"
    fi
    if [ "$(left)" -gt 45 ]; then
      # One server, two worker processes on its port (rdad serve --workers 2): the row to set
      # against the single-server jpeg256 row at the same concurrency (docs/workers.md).
      port3=$(free_port)
      pid3=$(serve "$port3" "$SERVE_DIR" "$RESULTS/serve-workers.log" --workers 2)
      if wait_ready "$port3" "$pid3" && wait_workers "$port3" 2; then
        load "jpeg256-c$c-2workers" "http://127.0.0.1:$port3" jpeg256 "$c" 1 2
        if [ $MODE = gpu ]; then # what each worker holds on the device (its CUDA context + model)
          nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader \
            >"$RESULTS/workers-gpu-memory.csv" 2>&1 || true
        fi
      else
        skip "two workers did not both become ready (see serve-workers.log)"
        tail -n 5 "$RESULTS/serve-workers.log"
      fi
      kill -TERM "$pid3" 2>/dev/null
    else
      skip "two workers on one port: out of time budget"
    fi
  else
    skip "service did not become ready (see serve.log)"
    tail -n 20 "$RESULTS/serve.log"
  fi
  kill -TERM "$pid" 2>/dev/null
  wait 2>/dev/null
fi

$PY benchmarks/gpu_report.py --results "$RESULTS" --mode "$MODE" --backbone "$BACKBONE" --image-size "$SIZE"
say "done in $(($(date +%s) - START)) s"
