# syntax=docker/dockerfile:1
# The spendstream image: `spendstream worker`, `spendstream sink`, `spendstream migrate`, ...
# (the entry point is the `spendstream` command). Built from this repository with pip:
#
#   docker build -t ghcr.io/spendstream/spendstream:0.1.0 .
#
# Runs as the unprivileged user 10001 and writes only to /tmp and its working directory
# /var/lib/spendstream, so it works with a read-only root file system (helm/spendstream mounts
# emptyDirs there).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore): the package, and the Avro schemas and
# ClickHouse migrations that the wheel packages as streams/_schemas and streams/_clickhouse.
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
COPY clickhouse ./clickhouse
# spendstream with the worker and sink extras (no local stack: production uses an external
# ClickHouse), every dependency as a wheel (all pinned ones ship manylinux wheels).
RUN pip wheel --wheel-dir /wheels '.[worker,sink]'

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG UID=10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid "${UID}" spendstream \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /home/spendstream \
       --create-home --shell /usr/sbin/nologin spendstream \
    && install -d -o "${UID}" -g "${UID}" /var/lib/spendstream
# The wheels are bind-mounted from the build stage, so they never land in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels 'spendstream[worker,sink]' \
    && spendstream --version
WORKDIR /var/lib/spendstream
USER ${UID}:${UID}
ENTRYPOINT ["spendstream"]
CMD ["--help"]
