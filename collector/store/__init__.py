"""PostgreSQL, SQL only: inserts, queries, stats, dead letters and the migrations runner.

Every function takes an open psycopg connection. Imports only collector.core.
"""
