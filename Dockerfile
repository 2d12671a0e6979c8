# syntax=docker/dockerfile:1
# One Dockerfile, one lean image per role. Build context = the repository root (Dockerfile.dockerignore
# keeps it small); pick the role with --target:
#   docker build --target serving -t <registry>/<project>/fraud-serving:<tag> .   # the model server (MLServer)
#   docker build --target tools   -t <registry>/<project>/fraud-tools:<tag> .     # fraudctl: pipeline steps, replay, waves
#   docker build --target mlflow  -t <registry>/<project>/fraud-mlflow:<tag> .    # the MLflow tracking server
# Each role installs only its own hash-locked file (requirements-<role>.lock, written by `./dev lock` from
# the extras in pyproject.toml) with pip --require-hashes --no-deps: every file is checked, nothing unpinned
# is pulled in. The serving image carries neither the MLflow server, psycopg2 nor matplotlib.

# python:3.11.7-slim-bookworm pinned by its multi-arch index digest. Found, not computed: the digest Renovate
# pins for this tag in github.com/nalabelle/build (images/digests.Dockerfile), also used by other public
# Dockerfiles for the same tag.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:d11b9bd5e49ea7401753d78f4d3b56f3aec952b85b49bcae88981f0452818e0b

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/fraud/app
RUN groupadd --system --gid 10001 fraud \
    && useradd --system --uid 10001 --gid fraud --home-dir /opt/fraud --no-create-home \
       --shell /usr/sbin/nologin fraud \
    && mkdir -p /opt/fraud/app /opt/fraud/work && chown fraud:fraud /opt/fraud/work
WORKDIR /opt/fraud/work


# --- the model server -------------------------------------------------------------------------------
FROM base AS serving
# One thread per native pool and no parallel workers: measured on 2 cores (serving/settings.py).
ENV OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    MLSERVER_PARALLEL_WORKERS=0
COPY requirements-serving.lock /opt/fraud/build/
RUN pip install --require-hashes --no-deps -r /opt/fraud/build/requirements-serving.lock
# The runtime and the model artifact contract it loads with (model/ also holds the pipeline's own
# transformers that the saved estimator references, and the compiled scorer); fraudctl/ for the leaf modules
# every package imports (errors, atomic file writes).
COPY model/ /opt/fraud/app/model/
COPY serving/ /opt/fraud/app/serving/
COPY fraudctl/ /opt/fraud/app/fraudctl/
RUN mkdir -p /opt/fraud/empty
USER 10001:10001
# HTTP (V2 + /feedback), gRPC, Prometheus /metrics.
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
# Configure with the MLSERVER_* variables from serving.settings.mlserver_environment() (the default CMD
# serves from the environment), or mount a folder written by serving.settings.write_mlserver_config()
# and pass its path. Secrets from the environment: FEEDBACK_SIGNING_KEY (required, the same on every
# replica); MLFLOW_TRACKING_URI and artifact-store credentials for models:/ URIs.
ENTRYPOINT ["python", "-m", "serving.server"]
CMD ["/opt/fraud/empty"]


# --- fraudctl: training pipeline steps, the replay webhook, the waves gate ---------------------------
FROM base AS tools
# git: the training pipeline's last step proposes the new model version as a commit or pull request.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/*
COPY requirements-tools.lock /opt/fraud/build/
RUN pip install --require-hashes --no-deps -r /opt/fraud/build/requirements-tools.lock
COPY pyproject.toml /opt/fraud/app/
COPY model/ /opt/fraud/app/model/
COPY serving/ /opt/fraud/app/serving/
COPY infra/ /opt/fraud/app/infra/
COPY ops/ /opt/fraud/app/ops/
COPY rollout/ /opt/fraud/app/rollout/
COPY rehearsal/ /opt/fraud/app/rehearsal/
COPY fraudctl/ /opt/fraud/app/fraudctl/
# The pipeline's proposal validates the edited stack like the program does, vendored chart archives included.
COPY charts/ /opt/fraud/app/charts/
# The `fraudctl` command (pyproject's console script) without building the project: a build would fetch
# an unpinned setuptools, which --require-hashes exists to prevent.
RUN printf '#!/usr/local/bin/python\nimport sys\nfrom fraudctl.cli import main\nsys.exit(main())\n' \
       > /usr/local/bin/fraudctl \
    && chmod 0755 /usr/local/bin/fraudctl
USER 10001:10001
ENTRYPOINT ["fraudctl"]
CMD ["--help"]


# --- the MLflow tracking server (PostgreSQL backend store, S3/MinIO artifacts) -----------------------
FROM base AS mlflow
COPY requirements-mlflow-server.lock /opt/fraud/build/
RUN pip install --require-hashes --no-deps -r /opt/fraud/build/requirements-mlflow-server.lock
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
