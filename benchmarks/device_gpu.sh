#!/usr/bin/env bash
# The GPU checks of issues 10 and 12, prepared for a lent device machine (an
# H200 with JAX, no TensorFlow, no Keras, no network there). Two parts, one
# device call each (a call may run 10 minutes; 15 minutes of device time in
# all, starts included):
#   issue12: step_time of rec_fixed_skip / slide_13 / xl_2048 at the issue
#            setting (small_37m, 4096 tokens) with peak memory, utilisation
#            (model FLOP/s over dense matmul FLOP/s), decoding ms/token
#            (float32 / bfloat16 / int8 x batch 1, 8, 32);
#   issue10: the code comparison at small_37m (rec_fixed_skip, slide_12,
#            xl_512; state carried vs reset every segment, by position):
#            benchmarks/memory_value_gpu.py, a numpy input pipeline in place
#            of tf.data (TensorFlow is too large to carry there).
#
# Here, once, with network: the pure-Python wheels the machine lacks (.whl/)
# and the code corpus as bytes (.gpu_data/, from the TFDS build), both
# git-ignored, ~42 MB together:
#     bash benchmarks/device_gpu.sh --prepare /work/mv_art/tfds
# There, through the device tool:
#     run(command="bash benchmarks/device_gpu.sh issue12", carry=[".whl"], timeout_s=480)
#     run(command="bash benchmarks/device_gpu.sh issue10", carry=[".whl", ".gpu_data"], timeout_s=540)
# Smoke run of the script itself on a CPU (tiny sizes, the venv's packages):
#     QUICK=1 OUT=/tmp/gpu_smoke PATH=.venv/bin:$PATH bash benchmarks/device_gpu.sh issue12
set -u
KERAS_VERSION=3.15.1
HUB_VERSION=0.32.0

if [ "${1:-}" = "--prepare" ]; then
    [ -n "${2:-}" ] || { echo "usage: $0 --prepare TFDS_DATA_DIR (holding code/)"; exit 2; }
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
    mkdir -p .whl
    # The device's Python is 3.12; these are pure Python (py3-none-any) or
    # manylinux wheels. Everything else keras needs (numpy, h5py, ml-dtypes,
    # rich, absl-py, packaging, regex, sentencepiece) is installed there.
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        "keras==$KERAS_VERSION" "keras-hub==$HUB_VERSION" namex optree kagglehub kagglesdk
    python3 -m benchmarks.memory_value_gpu --export .gpu_data/code.npz --data-dir "$2" || exit 1
    du -sh .whl .gpu_data
    exit 0
fi

OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
# The wheels go in only where keras is missing (the device machine).
if ! python3 -c "import keras, keras_hub" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:.
else
    export PYTHONPATH=.
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" || exit 1

part() {  # part SECONDS NAME ARGS...: one benchmark, its log in $OUT
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    # QUICK=1 (a smoke run of this script on a CPU) passes --quick.
    timeout "$limit" python3 -m "$@" ${QUICK:+--quick} --out-dir "$OUT" 2>&1 | tail -n 25
    echo "== $name: exit ${PIPESTATUS[0]}"
}
case "${1:-}" in
issue12)
    {
        part 170 step_time benchmarks.step_time --setting issue \
            --presets rec_fixed_skip,slide_13,xl_2048
        part 120 utilisation benchmarks.utilisation --setting issue \
            --presets rec_fixed_skip --dropouts 0.05
        part 150 decoding benchmarks.decoding --batches 1,8,32
    } 2>&1 | tee "$OUT/device_gpu_issue12.log"
    ;;
issue10)
    # About 1.2 minutes of training per model (the tokens reached are in the
    # JSON), then 2 x 1M test tokens each.
    part 500 memory_value_gpu benchmarks.memory_value_gpu \
        --corpus-npz .gpu_data/code.npz --minutes-per-model 1.2 \
        2>&1 | tee "$OUT/device_gpu_issue10.log"
    ;;
*)
    echo "usage: $0 issue12|issue10 (or --prepare TFDS_DATA_DIR here)"
    exit 2
    ;;
esac
ls -la "$OUT"
