# syntax=docker/dockerfile:1
# Reclaim's one image: the API, the schedulers, training, migrations and the MLflow server all
# run it (compose.yaml says which command each runs). docs/deploy.md is the runbook.

# --- build: the project's wheel and its dependencies' wheels, from the project's own files --
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reclaim/ reclaim/
COPY features/ features/
COPY models/ models/
COPY training/ training/
COPY serving/ serving/
COPY simulator/ simulator/
COPY replay/ replay/
RUN pip wheel --wheel-dir /wheels .

# --- run: the wheels installed, no compiler, no source tree, a user without privileges ------
FROM python:3.11-slim
# LightGBM's OpenMP runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels reclaim && rm -rf /wheels
RUN useradd --create-home --uid 10001 reclaim \
    && mkdir -p /artifacts /data \
    && chown reclaim:reclaim /artifacts /data
USER reclaim
WORKDIR /home/reclaim
ENV PYTHONUNBUFFERED=1 \
    RECLAIM_LOG_FORMAT=json \
    RECLAIM_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["reclaim"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
