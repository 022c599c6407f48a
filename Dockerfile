# syntax=docker/dockerfile:1
# One image, two commands: `reco serve --host 0.0.0.0` (the default) and `reco worker` (the trainer).
#   docker build -t reco .
#   docker build -t reco:gpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
# TORCH_INDEX_URL is the extra index torch comes from (CPU wheels by default: the image stays ~1 GB
# instead of ~6 GB); CONSTRAINTS pins torch's version, which matches the CPU and the CUDA wheels alike.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG CONSTRAINTS=constraints-cpu.txt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# the dependencies change far less often than the code: install them in their own layer
COPY pyproject.toml README.md constraints-*.txt ./
RUN mkdir -p app && touch app/__init__.py \
    && pip install --extra-index-url "${TORCH_INDEX_URL}" -c "${CONSTRAINTS}" . \
    && pip uninstall -y reco
COPY app ./app
RUN pip install --no-deps -c "${CONSTRAINTS}" . \
    && cd / && reco --help > /dev/null

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECO_MIGRATIONS_DIR=/app/migrations \
    RECO_ARTIFACT_DIR=/artifacts \
    RECO_DATABASE_URL=sqlite:////app/var/reco.db
RUN groupadd --system --gid 10001 reco \
    && useradd --system --uid 10001 --gid reco --home-dir /app --no-create-home --shell /usr/sbin/nologin reco \
    && mkdir -p /app/var /artifacts \
    && chown reco:reco /app/var /artifacts
COPY --from=builder /opt/venv /opt/venv
# code and migrations stay owned by root: the service user can write only its data folders
COPY alembic.ini /app/alembic.ini
COPY migrations /app/migrations
WORKDIR /app
USER reco
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["reco"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
