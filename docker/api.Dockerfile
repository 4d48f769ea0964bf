# The API image: FastAPI, SQLAlchemy, Celery's client side. No torch, so it stays small.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY core ./core
COPY migrations ./migrations
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["sh", "-c", "uvicorn api.main:app --host 0.0.0.0 --port ${PORT:-8000} --workers ${API_WORKERS:-2} --no-access-log"]
