"""`python -m bench` (`make bench`): load the collector and report what it sustains.

One command, four measurements:

* **Load phases** (headless Locust, locustfiles/devices.py, via subprocess with
  ``--csv``): a *batch* phase (100 devices sending POST /api/logs/batch of 5 logs
  as fast as they are answered) and a *single* phase (100 devices each sending
  5 logs/s as POST /api/log). For each: accepted logs/s (logs that got a 2xx),
  persisted logs/s (growth of ``SELECT count(*) FROM logs`` over the same
  window), p50/p95/p99 of the ingest requests, failures, the backlog when the
  load stopped and how long the workers took to store it, whether every accepted
  log reached PostgreSQL, and the backlog and Redis memory *sampled during the
  load* (min, max, and the peak of each half of the load).
* **Drain rate**: with the Celery worker stopped, the stream is pre-filled with
  a backlog (200,000 entries by default) of the fleet's kind of logs
  (``collector.devtools.fleet``) by pipelined XADDs encoded with the collector's
  own ``collector.pipeline.codec.encode_entry``; then the worker starts and we
  time how fast the table grows, and read the worker's own log for the time each
  drain run spent inside ``drain_batch`` and the ``drain_stream`` tasks that
  carried the runs (many per task, DRAIN_TASK_SECONDS): how long each took, and
  the gaps between tasks on a pool process (Celery's hand-off).
* **Backlog** (stream lag + pending) at the end.
* **Resident memory** (VmRSS) of the API's Gunicorn processes and of the Celery
  worker processes, peak per phase, summed over each process tree and for the
  largest single process; and, to see where the cores went, the CPU used by the
  API, worker, nginx, PostgreSQL, Redis and Locust itself during each phase, and
  by everything else on the host ("other": a shared machine shows as such).

The report ends with the figures set against the performance targets
(bench/targets.py).

The stack: if something answers /health on the nginx port (18723) the bench
loads it as it is (and skips the drain measurement, which needs to stop the
workers). Otherwise it starts the Procfile's api1, api2, worker, beat and nginx
itself (with ``collector.devtools.processes``), on a database and Redis namespace
of its own (``logs_bench`` and ``bench:``, both wiped at the start) unless
DATABASE_URL / KEY_PREFIX (or --database-url / --key-prefix) say otherwise,
waits until each answers (the worker: ``celery inspect ping``), makes a fleet
key for the device ids ``bench-*`` and a reader key with
``python -m collector.keys``, and stops them at the end. With a stack already
running, the fleet sends DEVICES_API_KEY and the bench reads /api/stats with
DEVICES_READER_KEY, or else `make run`'s demo admin and reader keys
(var/demo-keys.env).

Results: a markdown table on stdout and in bench-results/latest.md, every
figure in bench-results/latest.json, and Locust's CSVs and the services' logs
in bench-results/latest/; ``--record docs/bench/latest.json`` also writes the
run's figures without the raw samples, the record docs/performance.md quotes.
``python -m bench --help`` lists the options (ports, durations, backlog size,
phases, thresholds). The exit status is 1 when a phase missed its Locust
thresholds or stored a different number of logs than were accepted, or the run
could not finish; the targets never change it.

Modules: options (options, namespace), stack (starting the Procfile's processes,
of this checkout or another), probes (rows, backlog, Redis memory, /proc RSS and
CPU), sampling, load (Locust phases), drain (drain phase), report and targets
(output), machine, common. More commands measure what the bench cannot:
``python -m bench.drainloop`` (drain_batch in a loop, no Celery),
``python -m bench.profile`` (py-spy on an API worker under the batch load) and
``python -m bench.wrk`` (wrk's workloads, on this checkout's stack or another's;
its figures and tables in bench.wrk_report).
"""
