-- Only safe while no stream id is stored twice (one stack, one Redis incarnation).
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_stream_entry_key;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_stream_id_key UNIQUE (stream_id);
ALTER TABLE dead_letters DROP COLUMN stream;
ALTER TABLE logs DROP CONSTRAINT logs_stream_entry_key;
ALTER TABLE logs ADD CONSTRAINT logs_stream_id_key UNIQUE (stream_id);
ALTER TABLE logs DROP COLUMN stream;
