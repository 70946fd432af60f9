"""`python -m bench` (`make bench`): load the collector and report what it sustains.

One command, four measurements:

* **Load phases** (headless Locust, locustfiles/devices.py, via subprocess with
  ``--csv``): a *batch* phase (100 devices sending POST /api/logs/batch of 5 logs
  as fast as they are answered) and a *single* phase (100 devices each sending
  5 logs/s as POST /api/log). For each: accepted logs/s (logs that got a 2xx),
  persisted logs/s (growth of ``SELECT count(*) FROM logs`` over the same
  window), p50/p95/p99 of the ingest requests, failures, the backlog when the
  load stopped and how long the workers took to catch up, and whether every
  accepted log reached PostgreSQL.
* **Drain rate**: with the Celery worker stopped, the stream is pre-filled with
  a backlog (200,000 entries by default) by pipelined XADDs encoded with the
  collector's own ``collector.stream.encode_entry``; then the worker starts and
  we time how fast the table grows.
* **Backlog** (stream lag + pending) at the end.
* **Resident memory** (VmRSS, summed over process trees) of the API's Gunicorn
  processes and of the Celery worker processes, peak per phase; and, to see
  where the cores went, the CPU used by the API, worker, nginx, PostgreSQL,
  Redis and Locust itself during each phase.

The stack: if something answers /health on the nginx port (18723) the bench
loads it as it is (and skips the drain measurement, which needs to stop the
workers). Otherwise it starts the Procfile's api1, api2, worker, beat and nginx
itself, on a database and Redis namespace of its own (``logs_bench`` and
``bench:``, both wiped at the start) unless DATABASE_URL / KEY_PREFIX (or
--database-url / --key-prefix) say otherwise, and stops them at the end.

Results: a markdown table on stdout and in bench-results/latest.md, every
figure in bench-results/latest.json, and Locust's CSVs and the services' logs
in bench-results/latest/. ``python -m bench --help`` lists the options (ports,
durations, backlog size, phases, thresholds). The exit status is 1 when a
phase missed its Locust thresholds or stored a different number of logs than
were accepted, or the run could not finish.
"""
