# The billing chore's image: a Celery worker by default; beat and the `chore` CLI
# run from the same image with another command (docker-compose.yml, docs/deploy.md).

# Build stage: the wheel (pure Python, no compiler needed); only the wheel leaves it.
FROM python:3.11.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pricing ./pricing
COPY chores ./chores
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 chore

# Nothing runs as root; beat keeps its schedule in Redis (celery-redbeat), not on disk.
USER chore
# The worker (the default command) is healthy while its main process answers a ping over
# the broker; beat overrides this in docker-compose.yml (it answers no ping).
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD celery -A chores.celery_app inspect ping -d "celery@$HOSTNAME" --timeout 10 || exit 1
CMD ["celery", "-A", "chores.celery_app", "worker", "--loglevel=INFO"]
