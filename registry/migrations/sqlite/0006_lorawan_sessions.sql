-- LoRaWAN uplinks belong to a session (issue 7); see migrations/postgres/0006 for the why.
-- SQLite cannot change a table's UNIQUE constraint in place: the table is rebuilt (without the
-- foreign key to lorawan_devices, as on PostgreSQL).

CREATE TABLE lorawan_uplinks_v2 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    dev_eui     TEXT NOT NULL,
    session     BIGINT NOT NULL DEFAULT 0,
    f_cnt       BIGINT NOT NULL,
    f_port      BIGINT,
    payload     BLOB NOT NULL,
    gateways    TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (dev_eui, session, f_cnt)
);
INSERT INTO lorawan_uplinks_v2 (id, dev_eui, session, f_cnt, f_port, payload, gateways, received_at)
    SELECT id, dev_eui, 0, f_cnt, f_port, payload, gateways, received_at FROM lorawan_uplinks;
DROP TABLE lorawan_uplinks;
ALTER TABLE lorawan_uplinks_v2 RENAME TO lorawan_uplinks;
-- No (dev_eui, id) index: listing newest first walks the UNIQUE index backwards.

-- Refused LoRaWAN frames and joins are counted per hour, like refused connections.
DROP TRIGGER events_hourly_insert;
CREATE TRIGGER events_hourly_insert AFTER INSERT ON events
    WHEN NEW.kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
                      'device.clone_suspected', 'api.unauthorized', 'api.forbidden',
                      'attestation.verified', 'attestation.failed', 'attestation.stale',
                      'lorawan.uplink_rejected', 'lorawan.join_refused', 'lorawan.join_accepted') BEGIN
    INSERT INTO event_hourly (kind, hour, shard, n) VALUES (NEW.kind, (NEW.at / 3600000) * 3600000, NEW.id % 16, 1)
        ON CONFLICT (kind, hour, shard) DO UPDATE SET n = n + 1;
END;

INSERT INTO event_hourly (kind, hour, shard, n)
SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM events
WHERE kind IN ('lorawan.uplink_rejected', 'lorawan.join_refused', 'lorawan.join_accepted')
GROUP BY 1, 2, 3
ON CONFLICT (kind, hour, shard) DO UPDATE SET n = n + excluded.n;
