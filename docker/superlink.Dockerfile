# The SuperLink image with fedmtl installed. docker/compose.yaml runs it with
# `--isolation process` (the ServerApp runs in the `serverapp` SuperExec container);
# fedmtl is installed here too so that `--isolation subprocess` (the default: the
# SuperLink starts the ServerApp itself) works with this image alone.
# Build context: the repository root.
ARG FLWR_VERSION=1.41.0
FROM flwr/superlink:${FLWR_VERSION}

WORKDIR /app
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && python -m pip install --no-cache-dir "numpy>=1.24" "pandas>=2.0" "hydra-core>=1.3" "cloudpickle>=2.0" \
      "psutil>=5.9" "matplotlib>=3.7"
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app conf ./conf
COPY --chown=app:app fedmtl ./fedmtl
RUN python -m pip install --no-cache-dir --no-deps -e .

# Fleet, Control and Runtime APIs share one HTTP port in Flower 1.41
EXPOSE 8000
ENTRYPOINT ["flower-superlink"]
