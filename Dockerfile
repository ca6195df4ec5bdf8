# Minimal image: the library, the CLI and the bundled base encoder (no network needed at run time).
# A later issue completes it (service entry point, non-root user, health check).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    RR_DATA_DIR=/data/experts \
    RR_DATASETS_DIR=/datasets

WORKDIR /srv/rr
COPY pyproject.toml README.md ./
COPY app ./app
COPY experts ./experts
COPY router ./router
COPY index ./index
# Point this at PyTorch's CPU wheel index to keep the image small; left empty,
# pip takes torch from PyPI (the larger CUDA build on x86_64).
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
    && pip install .

VOLUME ["/data"]
ENTRYPOINT ["rr"]
CMD ["demo"]
