# spikeboard on a GPU server:
#     docker build -t spikeboard .
#     docker run --gpus all -p 8000:8000 -v spikeboard-data:/data spikeboard
# The server runs one training worker per visible GPU (SPIKEBOARD_RUNS_PER_GPU
# for more); runs ask for the GPU with "device": "cuda".

# A CUDA runtime base for the NVIDIA container toolkit; the torch wheel brings its
# own CUDA libraries, built for the same CUDA as the index below (change both together).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Extras to install beside the app, e.g. --build-arg EXTRAS="[ray]" for the Ray executor.
ARG EXTRAS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's own Python in a virtual environment (the system one is externally managed).
# Versions come from the base image's release, which pins them in effect.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The CUDA build of the pinned torch, before the code: the largest layer stays cached.
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX}"

# The source tree itself is what runs (an editable install), so files beside the
# packages, such as static/, are where the app looks for them.
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir -e ".${EXTRAS}"

# Not root; /data belongs to that user, so a new named volume starts out writable.
RUN groupadd --system --gid 10001 spikeboard \
    && useradd --system --create-home --uid 10001 --gid 10001 spikeboard \
    && mkdir /data \
    && chown 10001:10001 /data
USER 10001:10001
VOLUME ["/data"]
# numba's compiled CPU loops (the fast backend on CPU) are cached on the volume:
# /app is not writable for this user, and a restart need not compile them again.
ENV NUMBA_CACHE_DIR=/data/numba-cache

EXPOSE 8000
# /api/health, never the dashboard page: a page request opens a full session.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4)"]
CMD ["spikeboard", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
