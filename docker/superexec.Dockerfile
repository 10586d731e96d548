# The SuperExec image with fedmtl: runs the ServerApp (next to the SuperLink) and the
# ClientApps (next to each SuperNode) in Flower's process isolation mode, and `flwr run`.
# Build context: the repository root (docker/compose.yaml sets it).
ARG FLWR_VERSION=1.41.0
FROM flwr/superexec:${FLWR_VERSION}

WORKDIR /app
# torch from the CPU wheel index, then fedmtl's other dependencies; flwr itself is the
# image's own (fedmtl needs flwr>=1.41,<1.42 and no Ray in a deployment).
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && python -m pip install --no-cache-dir "numpy>=1.24" "pandas>=2.0" "hydra-core>=1.3" "cloudpickle>=2.0" \
      "psutil>=5.9" "matplotlib>=3.7"
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app conf ./conf
COPY --chown=app:app fedmtl ./fedmtl
COPY --chown=app:app docker/run-experiment.sh docker/register-supernodes.sh ./docker/
RUN python -m pip install --no-cache-dir --no-deps -e . \
 && python -c "import fedmtl.federation.server_app, fedmtl.federation.client_app"

ENTRYPOINT ["flower-superexec"]
