-- LoRaWAN join server and uplinks (issue 7).
--
-- * lorawan_devices.activation: `otaa` (root keys; joins through the join server) or `abp`
--   (session keys provisioned; app_key then holds a sealed empty value and joins are refused).
-- * lorawan_devices.join_nonce: the last JoinNonce this join server sent the device (it must
--   increase); last_dev_nonce: LoRaWAN 1.1 DevNonces must increase (1.0 keeps the history in
--   lorawan_dev_nonces).
-- * lorawan_uplinks: accepted uplinks, one row per frame (dev_eui, f_cnt) however many gateways
--   heard it; the receptions are kept with it.

ALTER TABLE lorawan_devices ADD COLUMN activation TEXT NOT NULL DEFAULT 'otaa';
ALTER TABLE lorawan_devices ADD COLUMN join_nonce BIGINT;
ALTER TABLE lorawan_devices ADD COLUMN last_dev_nonce BIGINT;

CREATE TABLE lorawan_uplinks (
    id          BIGSERIAL PRIMARY KEY,
    dev_eui     TEXT NOT NULL REFERENCES lorawan_devices (dev_eui),
    f_cnt       BIGINT NOT NULL,
    f_port      BIGINT,
    payload     BYTEA NOT NULL,                 -- decrypted FRMPayload
    gateways    TEXT NOT NULL,                  -- JSON: [{gateway, rssi, lsnr, freq, datr, tmst}]
    received_at BIGINT NOT NULL,
    UNIQUE (dev_eui, f_cnt)
);
CREATE INDEX lorawan_uplinks_device ON lorawan_uplinks (dev_eui, id);
