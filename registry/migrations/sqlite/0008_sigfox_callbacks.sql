-- Sigfox backend callbacks (issue 8).
--
-- A device known only through callbacks has no NAK here (the Sigfox cloud verified its UL-AUTH):
-- `nak` becomes nullable, and `registered_via` says whether the device was provisioned through
-- the API (`api`) or first heard of in a callback (`callback`). SQLite cannot drop a NOT NULL
-- constraint, so the table is rebuilt.
CREATE TABLE sigfox_devices_v8 (
    device_id      TEXT PRIMARY KEY,
    nak            BLOB,
    last_seq       BIGINT,
    registered_via TEXT NOT NULL DEFAULT 'api',
    -- 1: the device encrypts its payloads (Sigfox's scheme is not public: reported, not decrypted).
    payload_encrypted BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
INSERT INTO sigfox_devices_v8 (device_id, nak, last_seq, created_at, updated_at)
    SELECT device_id, nak, last_seq, created_at, updated_at FROM sigfox_devices;
DROP TABLE sigfox_devices;
ALTER TABLE sigfox_devices_v8 RENAME TO sigfox_devices;

-- One message is (device, sequence number, backend time): the backend retries a callback after
-- 1, 2 and 4 minutes, and other base stations' copies come as `duplicate` callbacks. The unique
-- index makes a second store of the same message fail even if two requests race. Raw frames
-- carry no backend time (NULL), which a unique index does not compare.
ALTER TABLE sigfox_uplinks ADD COLUMN sigfox_time BIGINT;
-- The downlink (8 bytes) answered to this uplink's callback, answered again on a retry.
ALTER TABLE sigfox_uplinks ADD COLUMN downlink BLOB;
CREATE UNIQUE INDEX sigfox_uplinks_message ON sigfox_uplinks (device_id, seq_number, sigfox_time);

-- Downlinks queued for devices: each is answered to the first callback of its device that asks
-- for one (`ack`), in order; `uplink_id` names that uplink (NULL: still queued).
CREATE TABLE sigfox_downlinks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL,
    data       BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    uplink_id  BIGINT,
    sent_at    BIGINT
);
CREATE INDEX sigfox_downlinks_queue ON sigfox_downlinks (device_id, uplink_id, id);

-- Refused Sigfox frames and callbacks are counted per hour, like refused LoRaWAN frames.
DROP TRIGGER events_hourly_insert;
CREATE TRIGGER events_hourly_insert AFTER INSERT ON events
    WHEN NEW.kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
                      'device.clone_suspected', 'api.unauthorized', 'api.forbidden',
                      'attestation.verified', 'attestation.failed', 'attestation.stale',
                      'lorawan.uplink_rejected', 'lorawan.join_refused', 'lorawan.join_accepted',
                      'sigfox.frame_rejected', 'sigfox.callback_rejected') BEGIN
    INSERT INTO event_hourly (kind, hour, shard, n) VALUES (NEW.kind, (NEW.at / 3600000) * 3600000, NEW.id % 16, 1)
        ON CONFLICT (kind, hour, shard) DO UPDATE SET n = n + 1;
END;

INSERT INTO event_hourly (kind, hour, shard, n)
SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM events
WHERE kind IN ('sigfox.frame_rejected', 'sigfox.callback_rejected')
GROUP BY 1, 2, 3
ON CONFLICT (kind, hour, shard) DO UPDATE SET n = n + excluded.n;
