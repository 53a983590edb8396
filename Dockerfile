# One image for the gateway and the workers; the command picks the role.
FROM python:3.11-slim
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
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["privedge"]
