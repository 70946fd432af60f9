DROP TABLE device_keys;
