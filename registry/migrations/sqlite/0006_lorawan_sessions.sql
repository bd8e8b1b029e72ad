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
