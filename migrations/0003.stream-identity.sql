-- depends: 0002.dead-letters
-- The identity of a stored entry is (stream, stream_id), not stream_id alone: two
-- stacks with different KEY_PREFIX sharing one database, or a replacement Redis
-- whose clock is behind, produce the same entry id for different logs. `stream` is
-- the stream's key (prefix included) and its incarnation ("<key>#<epoch>", the epoch
-- being a random tag Redis keeps beside the stream), so ids of a new Redis never
-- collide with those of the one it replaced.
-- Rows stored before this migration get an empty stream: drain the stream (pending
-- 0) before upgrading, or an entry stored but not yet acknowledged at that moment
-- is stored once more under its new identity.
ALTER TABLE logs ADD COLUMN stream TEXT NOT NULL DEFAULT '';
ALTER TABLE logs ALTER COLUMN stream DROP DEFAULT;
ALTER TABLE logs DROP CONSTRAINT logs_stream_id_key;
ALTER TABLE logs ADD CONSTRAINT logs_stream_entry_key UNIQUE (stream, stream_id);

ALTER TABLE dead_letters ADD COLUMN stream TEXT NOT NULL DEFAULT '';
ALTER TABLE dead_letters ALTER COLUMN stream DROP DEFAULT;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_stream_id_key;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_stream_entry_key UNIQUE (stream, stream_id);
