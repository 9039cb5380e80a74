# syntax=docker/dockerfile:1
# Minimal image for the API and the workers (the deployment issue splits it into a slim API
# image and a CUDA worker image). Build: docker build -t leap .
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/srv/leap \
    LEAP_DATA_DIR=/data

WORKDIR /srv/leap
RUN useradd --create-home --uid 10001 leap && mkdir /data && chown leap /data

# Dependencies first (cached while only the code changes); torch first, as the Makefile does.
COPY pyproject.toml ./
RUN pip install "torch==2.13.0" \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY alembic.ini openapi.yaml ./
COPY migrations migrations
COPY models models
COPY workers workers
COPY app app

USER leap
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
ENTRYPOINT ["python", "-m", "app.cli"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
