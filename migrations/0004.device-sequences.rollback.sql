ALTER TABLE logs DROP COLUMN seq, DROP COLUMN boot_id;
DROP TABLE log_sequence_blocks;
