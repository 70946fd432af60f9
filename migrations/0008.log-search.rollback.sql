DROP TABLE device_counts;
DROP INDEX logs_created_idx;
DROP INDEX logs_message_trgm_idx;
-- pg_trgm stays: other objects may use it.
