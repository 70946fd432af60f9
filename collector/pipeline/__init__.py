"""The Redis side: stream codec, producer, drain, dead-letter replay, back-pressure,
trimming, accounting and the query cache. Knows no Flask and no Celery; imports
collector.core and collector.store.
"""
