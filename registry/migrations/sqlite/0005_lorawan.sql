-- LoRaWAN join server and uplinks (issue 7); see migrations/postgres/0005 for the why.

ALTER TABLE lorawan_devices ADD COLUMN activation TEXT NOT NULL DEFAULT 'otaa';
ALTER TABLE lorawan_devices ADD COLUMN join_nonce BIGINT;
ALTER TABLE lorawan_devices ADD COLUMN last_dev_nonce BIGINT;

CREATE TABLE lorawan_uplinks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    dev_eui     TEXT NOT NULL REFERENCES lorawan_devices (dev_eui),
    f_cnt       BIGINT NOT NULL,
    f_port      BIGINT,
    payload     BLOB NOT NULL,
    gateways    TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (dev_eui, f_cnt)
);
CREATE INDEX lorawan_uplinks_device ON lorawan_uplinks (dev_eui, id);
