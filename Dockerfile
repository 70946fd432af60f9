# One image for every process of the collector: the API (default CMD), the Celery
# worker, beat and Flower, and the one-shot migrations; docker-compose.yml picks
# the process with `command:`. Build: `docker compose build` (or `make up`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid so files the app writes to volumes have a predictable owner.
RUN groupadd --system --gid 10001 collector \
 && useradd --system --uid 10001 --gid collector --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin collector

WORKDIR /app

# Dependencies first, from setup.cfg alone, so editing the code reuses this layer
# and only a change to the dependency list reinstalls them. Only install_requires:
# the test and dev extras stay out of the image. (Every dependency ships manylinux
# wheels for 3.11, so no compiler is needed.)
COPY setup.cfg pyproject.toml ./
RUN python -c "import configparser; c = configparser.ConfigParser(interpolation=None); c.read('setup.cfg'); print(c['options']['install_requires'])" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The code, then the project itself without touching the dependencies. Editable on
# purpose: collector.migrate finds migrations/ next to the package directory, which
# a regular install into site-packages would leave behind.
COPY . .
RUN pip install --no-deps --editable . \
 && install -d -o collector -g collector /var/lib/collector

USER collector

# BIND: the API listens on every interface of the container (gunicorn.conf.py's
# default, 127.0.0.1, is for `make run`). /var/lib/collector is the one directory
# the app user may write to (beat's schedule).
ENV BIND=0.0.0.0:8000 \
    BEAT_SCHEDULE_FILE=/var/lib/collector/celerybeat-schedule
EXPOSE 8000

# No HEALTHCHECK here: the image also runs the worker, beat and migrations, which
# have no HTTP endpoint; docker-compose.yml gives each service its own check.
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
