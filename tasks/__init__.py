"""Celery side of the collector: the app, the beat schedule and the drain tasks."""
