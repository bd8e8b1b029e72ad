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

-- Refused LoRaWAN frames and joins are counted per hour, like refused connections.
CREATE OR REPLACE FUNCTION event_hourly_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO event_hourly (kind, hour, shard, n)
    SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM new_rows
    WHERE kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
                   'device.clone_suspected', 'api.unauthorized', 'api.forbidden',
                   'attestation.verified', 'attestation.failed', 'attestation.stale',
                   'lorawan.uplink_rejected', 'lorawan.join_refused', 'lorawan.join_accepted')
    GROUP BY 1, 2, 3
    ON CONFLICT (kind, hour, shard) DO UPDATE SET n = event_hourly.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

INSERT INTO event_hourly (kind, hour, shard, n)
SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM events
WHERE kind IN ('lorawan.uplink_rejected', 'lorawan.join_refused', 'lorawan.join_accepted')
GROUP BY 1, 2, 3
ON CONFLICT (kind, hour, shard) DO UPDATE SET n = event_hourly.n + excluded.n;
