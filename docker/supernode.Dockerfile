# The SuperNode image with fedmtl installed. docker/compose.yaml runs it with
# `--isolation process` (each ClientApp runs in its `clientapp-K` SuperExec container);
# fedmtl is installed here too so that `--isolation subprocess` works with this image
# alone. Its data: synthetic data are generated from the run's seed; MovieLens files
# or a partition folder (python -m fedmtl.deploy.export) are mounted and named in
# --node-config (dataset-path=..., split-path=...).
# Build context: the repository root.
ARG FLWR_VERSION=1.41.0
FROM flwr/supernode:${FLWR_VERSION}

WORKDIR /app
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && python -m pip install --no-cache-dir "numpy>=1.24" "pandas>=2.0" "hydra-core>=1.3" "cloudpickle>=2.0" \
      "psutil>=5.9" "matplotlib>=3.7"
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app conf ./conf
COPY --chown=app:app fedmtl ./fedmtl
RUN python -m pip install --no-cache-dir --no-deps -e .

ENTRYPOINT ["flower-supernode"]
