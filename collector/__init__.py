"""Device log collector: Flask ingest API, Redis Stream buffer, Celery drain, PostgreSQL storage."""
