-- Sigfox uplinks (issue 8): one row per accepted message of a device, keyed by its 12-bit
-- sequence number within a rollover epoch. `source` says how it arrived: `frame` (a raw frame
-- whose UL-AUTH fleetward verified with the device's NAK) or `callback` (the Sigfox backend,
-- which checked the UL-AUTH itself). `detail` keeps what came with it (JSON: station, rssi,
-- snr, transmission, lost messages before it).
CREATE TABLE sigfox_uplinks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL,
    seq_number  BIGINT NOT NULL,
    payload     BLOB NOT NULL,
    source      TEXT NOT NULL,
    detail      TEXT,
    received_at BIGINT NOT NULL
);
CREATE INDEX sigfox_uplinks_device ON sigfox_uplinks (device_id, id);
