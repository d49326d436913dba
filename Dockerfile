# syntax=docker/dockerfile:1
# Mambo's one image: every `mambo` command (worker, sink, source, api, topology apply, ...) runs from it.
#   docker build -t mambo .            docker run --rm mambo --help
# Two stages: the build stage installs the dependencies with uv into /opt/mambo (a virtual environment),
# then the package; the runtime stage copies that environment only (no compiler, no uv, no caches).
# It runs as the non-root user `mambo` (uid 10001), which owns its data folder /data (a named volume
# mounted there starts with that ownership, so there is no permission trap) and its HOME (numba's cache).
# No secret is baked in: the ClickHouse DSN and exchange keys come from the environment at run time.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv>=0.5" && uv venv /opt/mambo
WORKDIR /src
# The dependencies first, from pyproject.toml alone: this layer is reused while only the code changes.
COPY pyproject.toml README.md ./
RUN uv pip install --python /opt/mambo/bin/python --no-cache -r pyproject.toml
COPY mambo ./mambo
RUN uv pip install --python /opt/mambo/bin/python --no-cache --no-deps .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libgomp1: LightGBM's OpenMP runtime (the ml_signal strategy), not in the slim image
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mambo \
    && useradd --system --uid 10001 --gid mambo --home-dir /home/mambo --create-home mambo \
    && mkdir -p /data /etc/mambo \
    && chown mambo:mambo /data
COPY --from=build /opt/mambo /opt/mambo
# The default settings (no secrets); compose mounts the same file, the chart a ConfigMap made from it.
COPY deploy/helm/mambo/files/mambo.toml /etc/mambo/mambo.toml
ENV PATH=/opt/mambo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/home/mambo/.cache/numba \
    MAMBO_CONFIG=/etc/mambo/mambo.toml \
    MAMBO_DATA_DIR=/data \
    MAMBO_HEALTH_PORT=8080
USER mambo
WORKDIR /data
VOLUME ["/data"]
# 8000: the API; 8080: /health and /ready of a worker, the sink or a source.
EXPOSE 8000 8080
# Alive when the process's health server answers (the API answers /health on its own port: set
# MAMBO_HEALTH_PORT=8000 there). A one-shot command (topology apply) serves none and simply exits.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "mambo.streams.health", "/health"]
ENTRYPOINT ["mambo"]
CMD ["--help"]
