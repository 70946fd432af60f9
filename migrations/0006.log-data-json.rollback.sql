ALTER TABLE logs ALTER COLUMN log_data TYPE jsonb USING log_data::jsonb;
