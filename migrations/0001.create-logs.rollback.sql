DROP TABLE log_counts;
DROP TABLE logs;
