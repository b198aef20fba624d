# Production image: the NGC Triton server with twinserve installed; serves an artifacts folder
# (written by `twin export`) mounted at /artifacts, with the same repository layout as `twin serve`.
#
#   docker build -t twinserve .
#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/A:/artifacts:ro twinserve
#
# Triton 2.51 (container 24.10) is the release whose server the nvidia-pytriton wheel bundles.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/twinserve
COPY pyproject.toml README.md ./
COPY twinserve twinserve
COPY training training
COPY export export
COPY serving serving
COPY clients clients
COPY benchmarks benchmarks
# Served models need numpy, onnxruntime and the artifact manifest code only (no torch).
RUN pip install --no-cache-dir '.[client]' 'onnxruntime>=1.20' 'protobuf<5'

EXPOSE 8000 8001 8002
# `twin serve` finds /opt/tritonserver and its backends; the model repository is written to /models.
ENTRYPOINT ["twin", "serve", "--artifacts", "/artifacts", "--repository", "/models"]
