# fedloom: one image for every party (provision, coordinator, participants), CPU PyTorch.
# Holds code only: kits (keys, certificates) come in at run time as volumes (see docker-compose.yml).
# For NVIDIA GPUs build with a CUDA wheel instead, e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    RAY_USAGE_STATS_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

# PyTorch first and alone (its own cached layer), so `pip install .` never pulls a CUDA build
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# An unprivileged user; the directories the services write to (named volumes copy this ownership)
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin fedloom \
    && mkdir -p /app /kits /state /data \
    && chown fedloom:fedloom /kits /state /data

WORKDIR /app
# /app is also the Flower app directory: `fedloom provision --app /app` hashes its bundle and the
# coordinator runs it, so both see the very same files (and the same flwr, zlib and tomli-w).
COPY . /app
RUN pip install --no-cache-dir /app \
    && rm -rf /app/build /app/*.egg-info

USER 10001:10001
EXPOSE 9092
CMD ["fedloom", "--help"]
