# Production image: the NGC Triton server with twinserve installed; serves an artifacts folder
# (written by `twin export`) mounted at /artifacts, with the same repository layout as `twin serve`.
#
#   docker build -t twinserve .
#   python -c 'import secrets; print(secrets.token_urlsafe(32))' > api-key   # readable by uid 10001
#   docker run --rm --shm-size=1g -p 8001:8001 -p 8000:8000 \
#       -v $PWD/A:/artifacts:ro -v $PWD/api-key:/run/secrets/api-key:ro \
#       twinserve --api-key-file /run/secrets/api-key \
#       [--tls-cert /run/secrets/cert.pem --tls-key /run/secrets/key.pem]
#
# Inside the container the server must listen on 0.0.0.0 to be reached through -p, so it needs the
# API key (without one `twin serve` exits with code 2). With TLS, HTTP stays on the container's
# loopback (Triton's HTTP has no TLS), so publish 8001 only; metrics (8002, no key) stay on loopback
# unless --metrics-host 0.0.0.0 is added. --shm-size: the Python backend talks to each model's stub
# process through /dev/shm, and Docker's default 64 MB is too small for many streams or long clips.
#
# Base image: release 26.10, later than 25.07, the release with the fixes of NVIDIA's Triton security
# bulletin of August 2025 (HTTP chunked encoding, Python-backend shared memory, stream cancellation)
# and later than the 2026 bulletins found when this was written (e.g. CVE-2026-24207, May 2026).
# Check NVIDIA's Triton security bulletins for a newer fixed release before building.
# Pin it by digest for reproducible builds; the digest is not recorded here because it was not
# available where this file was written. Get it with
#   docker buildx imagetools inspect nvcr.io/nvidia/tritonserver:26.10-py3 --format '{{json .Manifest.Digest}}'
# and build with --build-arg TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.10-py3@sha256:<digest>.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.10-py3
FROM ${TRITON_IMAGE}

WORKDIR /opt/twinserve
COPY pyproject.toml README.md ./
COPY twinserve twinserve
COPY training training
COPY export export
COPY serving serving
COPY clients clients
COPY benchmarks benchmarks
# Served models need numpy, onnxruntime and the artifact manifest code only (no torch). The image's
# Python (Ubuntu 24.04) is the one its Python backend runs, so install into it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
RUN pip install --no-cache-dir '.[client]' 'onnxruntime>=1.20' 'protobuf<5'

# Run as an unprivileged user that owns only the model repository it writes.
RUN useradd --system --uid 10001 --create-home twin && mkdir /models && chown twin /models
USER twin

EXPOSE 8000 8001 8002
# `twin serve` finds /opt/tritonserver and its backends; the model repository is written to /models.
# Arguments given to `docker run` are added (the API key file, TLS, limits).
ENTRYPOINT ["twin", "serve", "--artifacts", "/artifacts", "--repository", "/models", "--host", "0.0.0.0"]
