# The worker image: torch with CUDA (PyPI's Linux x86_64 wheel of torch bundles the CUDA
# runtime; the host needs the NVIDIA driver and container toolkit), plus the API's tables.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A C compiler for the gate kernels the CPU's closed-form layers build at first use
# (gradlab/instruments/native.py, -march=native: built where they run, not here)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY core ./core
COPY models ./models
COPY worker ./worker
COPY gradlab ./gradlab
COPY migrations ./migrations
RUN pip install --no-cache-dir '.[worker]' flower==2.2.0
# One solo worker per GPU: one experiment at a time, no forked CUDA contexts.
CMD ["celery", "-A", "worker.celery_app", "worker", "--pool", "solo", "--concurrency", "1", \
     "--loglevel", "INFO", "-Q", "gradlab"]
