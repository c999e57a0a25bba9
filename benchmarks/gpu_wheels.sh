#!/usr/bin/env bash
# Download, where the package index is reachable, the Python 3.12 manylinux wheels that the
# serving stack needs on the borrowed GPU machine (which has no package index), into .gpu/wheels/.
# onnxruntime-gpu (~255 MB) is also cut into parts under 60 MB (.gpu/parts/) so that each part
# fits in one transfer to that machine; benchmarks/gpu_check.sh reassembles and installs them.
#   bash benchmarks/gpu_wheels.sh            # then send .gpu/ (see README "GPU check")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_WHEELS_DIR:-.gpu}
PART_MB=${PART_MB:-55}
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}
# The serving stack minus what that machine already has (numpy, opencv, httpx, uvloop,
# prometheus-client, anyio, click, h11, typing-extensions, annotated-doc, pillow); httptools is
# uvicorn[standard]'s parser, as in the serving image.
SERVE=(
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5
  pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5
  annotated-types==0.8.0 uvicorn==0.54.0 python-multipart==0.0.34 httptools==0.9.0
  opentelemetry-api==1.45.2
)
# Optional GPU JPEG decode (RDAD_GPU_DECODE), in its own folder: its wheels ship a regular
# `nvidia` package that must not shadow the CUDA libraries' namespace in the main install.
read -r -a OPTIONAL <<<"${GPU_OPTIONAL:-nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.2.3.58}"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
  manylinux_2_35_x86_64; do
  PLATFORMS+=(--platform "$p")
done
download() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$1" "${@:2}"
}
mkdir -p "$OUT/wheels" "$OUT/ort" "$OUT/parts" "$OUT/optional"
download "$OUT/wheels" "${SERVE[@]}"
if [ ${#OPTIONAL[@]} -gt 0 ]; then
  download "$OUT/optional" "${OPTIONAL[@]}" || echo "gpu_wheels: optional ${OPTIONAL[*]} not fetched"
fi
download "$OUT/ort" "$ORT_GPU"
wheel=$(ls "$OUT"/ort/onnxruntime_gpu-*.whl | head -n1)
rm -f "$OUT"/parts/*
split -b "${PART_MB}M" -d -a 2 "$wheel" "$OUT/parts/$(basename "$wheel").part"
(cd "$OUT/parts" && sha256sum "../ort/$(basename "$wheel")" | sed "s#../ort/##" > SHA256SUMS)
ls -l "$OUT/wheels" "$OUT/optional" "$OUT/parts"
echo "gpu_wheels: $(ls "$OUT"/parts/*.part* | wc -l) parts of onnxruntime-gpu under $OUT/parts"
