# The image every Understudy pod runs: Ray head, workers and job submitter (k8s/raycluster.yaml,
# k8s/rayjob.yaml) and the MLflow server (k8s/mlflow.yaml). Build from the repo root:
#   docker build -t understudy:0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
# GPU workers: the same with CUDA torch:
#   docker build -t understudy:0.1.0-gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

# wget: KubeRay's health probes on Ray pods call it.
RUN apt-get update && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CPU wheel index: the torch==2.13.0 pin in pyproject.toml is then
# already met (an unpinned torch from PyPI is the multi-GB CUDA build).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX}

# The project is installed as a package (understudy-icrl), not run from a checkout: what
# pyproject.toml maps into it is copied in, the package data included (the ready experiments
# and pipelines, the benchmarks' speeds `understudy plan` reads, the RayCluster it plans for),
# then the copied sources are removed, so `understudy experiment NAME` and `understudy plan NAME`
# find everything through the installed package from any directory. tests/test_wheel.py builds
# the wheel from exactly what these COPY lines bring in, installs it alone and runs both.
WORKDIR /app
COPY pyproject.toml README.md LICENSE runtime_env.yaml ./
COPY platform platform
COPY algorithms algorithms
COPY histories histories
COPY envs envs
COPY tune_configs tune_configs
COPY docs/bench docs/bench
COPY k8s/raycluster.yaml k8s/raycluster.yaml
# psycopg (3): the MLflow server's PostgreSQL backend store; SQLAlchemy 2.1 opens postgresql://
# URIs with it (psycopg2 would need postgresql+psycopg2://).
RUN pip install --no-cache-dir . "psycopg[binary]==3.3.9" \
    && rm -rf build ./*.egg-info platform algorithms histories envs tune_configs docs k8s
# A ready experiment by bare name, from another directory: an image that could not find its
# experiments or speeds is not built.
RUN cd / && understudy plan minatar_breakout_to_spaceinvaders --scale full > /dev/null

# The image has no .git: the commit it was built from is the code version MLflow records.
ARG GIT_COMMIT=unknown
ENV UNDERSTUDY_CODE_VERSION=${GIT_COMMIT} PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0

# Ray's own images run as uid 1000; so does this one (the pods' fsGroup matches).
RUN useradd --create-home --uid 1000 ray && mkdir -p /workspace && chown ray /workspace
USER 1000
