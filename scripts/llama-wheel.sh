#!/usr/bin/env bash
# Build (once per machine kind) and install llama-cpp-python, portably.
#
# pip's default build is native (-march=native), which crashed on CPUs with AMX (issue 9): the wheel
# depends on the CPU it was compiled on and pip's wheel cache does not know that (its key is the
# sdist, not CMAKE_ARGS). So this script builds with an explicit, portable instruction set and keeps
# the wheel in its own folder keyed by version and flags; pip's cache is not used for it.
#
#   x86-64:  AVX, AVX2, FMA, F16C, BMI2 where the CPU has them (Haswell and later); never AVX-512 or AMX
#   ARM64:   the armv8-a baseline (NEON)
#   other:   GGML_NATIVE=OFF with ggml's defaults
#
# Usage: scripts/llama-wheel.sh PIP [--print-flags]
# Env:   LLAMA_CPP_VERSION (default below), KEYSTILE_WHEELHOUSE (default ~/.cache/keystile/wheels),
#        LLAMA_CMAKE_ARGS (replaces the chosen flags entirely, e.g. "-DGGML_NATIVE=ON" to go native)
set -euo pipefail

PIP=${1:?usage: llama-wheel.sh PIP}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}

cmake_args() {
    local args="-DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
    case "$(uname -m)" in
        x86_64|amd64)
            local flags=""
            [ -r /proc/cpuinfo ] && flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
            # macOS has no /proc/cpuinfo: every x86 Mac since 2013 has AVX2/FMA/F16C.
            [ -z "$flags" ] && [ "$(uname -s)" = Darwin ] && flags="avx avx2 fma f16c bmi2"
            for f in avx avx2 fma f16c bmi2; do
                local opt; opt=$(echo "$f" | tr a-z A-Z)
                if [[ " $flags " == *" $f "* ]]; then args="$args -DGGML_$opt=ON"; else args="$args -DGGML_$opt=OFF"; fi
            done
            args="$args -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
            args="$args -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
            ;;
    esac
    echo "$args"
}

ARGS=${LLAMA_CMAKE_ARGS:-$(cmake_args)}
if [ "${2:-}" = "--print-flags" ]; then echo "$ARGS"; exit 0; fi

PY="$(dirname "$PIP")/python"
KEY=$(printf '%s|%s|%s' "$VERSION" "$(uname -sm)" "$ARGS" | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')
HOUSE=${KEYSTILE_WHEELHOUSE:-$HOME/.cache/keystile/wheels}/llama-cpp-python-$VERSION-$KEY
mkdir -p "$HOUSE"
if command -v flock >/dev/null; then exec 9>"$HOUSE/.lock"; flock 9; fi  # one build at a time
if ! ls "$HOUSE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $VERSION with: $ARGS (takes minutes; kept in $HOUSE)"
    tmp=$(mktemp -d "$HOUSE/.build.XXXXXX")
    CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2) \
        "$PIP" wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION"
    mv "$tmp"/llama_cpp_python-*.whl "$HOUSE"/
    rm -rf "$tmp"
    echo "$ARGS" > "$HOUSE/CMAKE_ARGS"
fi
WHEEL=$(ls "$HOUSE"/llama_cpp_python-*.whl | head -1)
VENV_MARK="$(dirname "$(dirname "$PIP")")/.llama-wheel"
if [ "$(cat "$VENV_MARK" 2>/dev/null)" != "$WHEEL" ]; then
    "$PIP" install -q --force-reinstall --no-deps "$WHEEL"
    echo "$WHEEL" > "$VENV_MARK"
fi
