-- LoRaWAN uplinks belong to a session (issue 7).
--
-- Frame counters restart at 0 with every join, so (dev_eui, f_cnt) alone would take the first
-- uplinks of a new session for copies of the previous session's frames. `session` is the
-- JoinNonce of the join that opened it, plus one (0: an ABP device's provisioned session).

ALTER TABLE lorawan_uplinks ADD COLUMN session BIGINT NOT NULL DEFAULT 0;
ALTER TABLE lorawan_uplinks DROP CONSTRAINT lorawan_uplinks_dev_eui_f_cnt_key;
ALTER TABLE lorawan_uplinks ADD CONSTRAINT lorawan_uplinks_frame UNIQUE (dev_eui, session, f_cnt);
-- Listing a device's uplinks newest first walks this constraint's index backwards; the
-- (dev_eui, id) index only cost every insert (measured on the UDP path's batches).
DROP INDEX lorawan_uplinks_device;
-- No foreign key from uplinks to devices: PostgreSQL checks it with a trigger per inserted row,
-- measured at a quarter of a 2,000-uplink batch insert; LoRaWAN devices are never deleted, and
-- the uplink path inserts only frames whose device it just read.
ALTER TABLE lorawan_uplinks DROP CONSTRAINT lorawan_uplinks_dev_eui_fkey;
