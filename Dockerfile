# syntax=docker/dockerfile:1
# LLM Server image: the same server as `make run` (manage.py serve, uvicorn), as a non-root user.
# Build: docker build -t llmserver .   Run: see docs/operations.md, "Docker".

# --- Build stage: the pinned runtime dependencies in a virtualenv ---------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Every pinned package ships a manylinux wheel, so no compiler is needed.
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

# --- Runtime stage ----------------------------------------------------------------------------
FROM python:3.11-slim

# Production mode: the server refuses to start without SECRET_KEY, ALLOWED_HOSTS and
# FIELD_ENCRYPTION_KEYS (see docs/operations.md).
# The SQLite database and the log file live in directories the app user owns; mount a volume on
# /app/data to keep the database, or point DATABASE_URL at PostgreSQL.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_ENV=production \
    SERVER_HOST=0.0.0.0 \
    SERVER_PORT=5601 \
    DATABASE_URL=sqlite:////app/data/db.sqlite3 \
    LOG_FILE=/app/logs/app.log

RUN groupadd --system app \
    && useradd --system --gid app --no-create-home --home-dir /app --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The code stays owned by root: the app user can read it but not change it.
COPY . .
RUN mkdir -p /app/data /app/logs && chown app:app /app/data /app/logs

USER app
EXPOSE 5601

# Liveness through the real HTTP stack. Python's urllib, since the slim image has no curl. The
# Host header is the first ALLOWED_HOSTS entry, because production answers 400 to any other host
# (a leading '.' is dropped; '*' means any host).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; host = os.environ.get('ALLOWED_HOSTS', '').split(',')[0].strip().lstrip('.').replace('*', '') or '127.0.0.1'; r.urlopen(r.Request('http://127.0.0.1:' + os.environ.get('SERVER_PORT', '5601') + '/api/v1/system/health', headers={'Host': host}), timeout=4)"]

# `exec` makes the server PID 1's successor, so `docker stop` (SIGTERM) reaches uvicorn, which
# lets requests in flight finish (GRACEFUL_SHUTDOWN_SECONDS).
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve"]
