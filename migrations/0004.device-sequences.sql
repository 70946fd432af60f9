-- depends: 0003.stream-identity
-- Device sequence numbers: a log may carry (boot_id, seq), and (device_id, boot_id,
-- seq) is stored exactly once however a copy reaches us (an HTTP retry, a resend
-- from the device's disk after a reboot, another API instance, a dead-letter
-- replay). The identity lives here, not in `logs`, so it does not depend on how
-- `logs` is partitioned: a late resend has a new receive time.
--
-- One row per device, boot and block of 1,024 consecutive seq numbers, with a bit
-- per seq: a seq is claimed by setting its bit in the transaction that inserts its
-- log (a set bit means a later copy is a duplicate), and the gap audit reads about
-- one row per 1,024 logs instead of one per log. The bits are 128 bytes of bytea,
-- not BIT(1024): the drain reads and writes them in binary, not as 1,024 characters.
CREATE TABLE log_sequence_blocks (
    device_id VARCHAR(100) NOT NULL,
    boot_id   VARCHAR(64)  NOT NULL,
    block     BIGINT       NOT NULL,  -- seq >> 10
    bits      BYTEA        NOT NULL,  -- 128 bytes, little-endian: bit i is seq block * 1024 + i
    PRIMARY KEY (device_id, boot_id, block)
);

ALTER TABLE logs ADD COLUMN boot_id VARCHAR(64), ADD COLUMN seq BIGINT;
