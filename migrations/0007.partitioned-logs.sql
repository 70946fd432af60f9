-- depends: 0006.log-data-json
-- `logs` becomes partitioned by receive time, with compact rows. See docs/storage.md.
--
-- Receive time (received_at) is the stream entry's time: the milliseconds of its id
-- "<ms>-<n>", which Redis fixed when the log was queued and which travels with the
-- entry through every redelivery and replay. So the entry's identity (stream,
-- received_at, entry_seq) can hold the partition key, and its unique index, which
-- makes a redelivered entry a no-op (ON CONFLICT DO NOTHING), works across partitions.
-- The stream's name and incarnation are stored once, in log_streams, not in every row.
--
-- Columns are ordered by alignment (8-byte, then 4, then 2, then variable width) so
-- that no row carries padding; the level is a 4-byte enum, ordered DEBUG < ... < CRITICAL.
-- There is no primary key on id: no query needs it, and an index on a partitioned
-- table must contain the partition key. id stays unique: every row takes it from the
-- one sequence (the old table's, so ids go on from where they were).
--
-- Upgrading: the old table is renamed logs_legacy here, in a moment (the rename waits
-- only for drain transactions in flight); from then on the drain writes into the new
-- table. `python -m collector.migrate` (make migrate) then moves the old rows across in
-- batches, while the drain runs, and drops logs_legacy when it is empty.

CREATE TYPE log_severity AS ENUM ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL');

CREATE TABLE log_streams (
    id   SMALLINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE  -- the stream identity "<key>#<epoch>" (pipeline.group.stream_identity)
);

ALTER TABLE logs RENAME TO logs_legacy;
ALTER TABLE logs_legacy RENAME CONSTRAINT logs_pkey TO logs_legacy_pkey;
ALTER TABLE logs_legacy RENAME CONSTRAINT logs_stream_entry_key TO logs_legacy_stream_entry_key;
ALTER INDEX logs_device_created_idx RENAME TO logs_legacy_device_created_idx;
ALTER SEQUENCE logs_id_seq OWNED BY NONE;
ALTER TABLE logs_legacy ALTER COLUMN id DROP DEFAULT;

CREATE TABLE logs (
    received_at TIMESTAMPTZ  NOT NULL,  -- the stream entry's time (its id's milliseconds)
    created_at  TIMESTAMPTZ  NOT NULL,  -- the device's timestamp, else the API's receive time
    id          BIGINT       NOT NULL DEFAULT nextval('logs_id_seq'),
    seq         BIGINT,                 -- with boot_id: the device's numbering (log_sequence_blocks)
    entry_seq   INTEGER      NOT NULL,  -- the n of the stream entry id "<ms>-<n>"
    log_level   log_severity NOT NULL,
    stream      SMALLINT     NOT NULL,  -- log_streams.id
    device_id   VARCHAR(100) NOT NULL,
    message     TEXT         NOT NULL,
    log_data    JSON COMPRESSION lz4,
    boot_id     VARCHAR(64)
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE logs_id_seq OWNED BY logs.id;

-- Exactly-once storage of stream entries: a redelivered entry hits ON CONFLICT. In this
-- column order an entry takes 24 bytes (with the stream first, alignment makes it 32),
-- and it doubles as the fleet-wide index on receive time. Entries arrive in about this
-- order, so its pages are filled whole (fillfactor 100) rather than left 10% empty.
CREATE UNIQUE INDEX logs_entry_key ON logs (received_at, entry_seq, stream) WITH (fillfactor = 100);
-- A device's newest logs: GET /api/logs/<device_id> (read backwards; ascending so that
-- each device's new entries land after its previous ones and pages split full).
CREATE INDEX logs_device_created_idx ON logs (device_id, created_at);

-- Anything no partition covers (a clock far off, a partition not created yet) lands
-- here; the maintenance task (store.partitions) moves it into partitions of its own.
CREATE TABLE logs_default PARTITION OF logs DEFAULT;

-- The stream entry id "<ms>-<n>" of a stored row, for people and for checks.
CREATE FUNCTION stream_entry_id(received_at TIMESTAMPTZ, entry_seq INTEGER) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (extract(epoch FROM received_at) * 1000)::bigint::text || '-' || entry_seq::text;

-- Per-level totals per UTC day of receive time, so that dropping a day's partition
-- takes its counts with it (in the same transaction). Counts kept before this
-- migration are those of logs_legacy: their day is -infinity until the rows move.
ALTER TABLE log_counts ADD COLUMN day DATE NOT NULL DEFAULT '-infinity';
ALTER TABLE log_counts ALTER COLUMN day DROP DEFAULT;
ALTER TABLE log_counts DROP CONSTRAINT log_counts_pkey;
ALTER TABLE log_counts ADD PRIMARY KEY (writer, day, log_level);

-- What retention removed, so that accepted = persisted + dead-lettered + expired.
CREATE TABLE expired_counts (
    kind TEXT   PRIMARY KEY CHECK (kind IN ('logs', 'dead_letters')),
    n    BIGINT NOT NULL
);
INSERT INTO expired_counts (kind, n) VALUES ('logs', 0), ('dead_letters', 0);
