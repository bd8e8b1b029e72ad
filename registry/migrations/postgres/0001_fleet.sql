-- fleetward registry, PostgreSQL. Times are unix milliseconds (BIGINT); flags are 0/1 BIGINT;
-- the same statements run on SQLite (migrations/sqlite/0001_fleet.sql mirrors this file).

CREATE TABLE provisioning_cas (
    id               TEXT PRIMARY KEY,          -- SHA-256 of the certificate, hex
    subject          TEXT NOT NULL,
    cert_der         BYTEA NOT NULL,
    identity_source  TEXT NOT NULL,             -- common_name | serial_number | spki_sha256
    identity_pattern TEXT,
    digest_mode      TEXT NOT NULL,             -- direct | sha256 | sha384
    auto_activate    BIGINT NOT NULL,
    status           TEXT NOT NULL,             -- active | revoked
    registered_at    BIGINT NOT NULL,
    registered_by    TEXT NOT NULL,
    revoked_at       BIGINT,
    revoked_by       TEXT,
    revoked_reason   TEXT
);

CREATE TABLE ca_revoked_serials (
    ca_id      TEXT NOT NULL REFERENCES provisioning_cas (id),
    serial     TEXT NOT NULL,                   -- lower-case hex, minimal
    revoked_at BIGINT NOT NULL,
    reason     TEXT,
    PRIMARY KEY (ca_id, serial)
);

CREATE TABLE ca_crls (
    ca_id       TEXT NOT NULL REFERENCES provisioning_cas (id),
    crl_der     BYTEA NOT NULL,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (ca_id, this_update)
);

CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    ca_id             TEXT NOT NULL REFERENCES provisioning_cas (id),
    cert_der          BYTEA NOT NULL,
    cert_sha256       TEXT NOT NULL,
    cert_serial       TEXT NOT NULL,
    cert_not_after    BIGINT NOT NULL,
    status            TEXT NOT NULL,            -- pending | active | quarantined | revoked
    status_changed_at BIGINT NOT NULL,
    first_seen        BIGINT NOT NULL,
    last_seen         BIGINT NOT NULL,
    last_peer         TEXT,
    tls_version       TEXT,
    tls_suite         TEXT,
    firmware_version  TEXT,
    firmware_digest   TEXT,
    integrity         TEXT NOT NULL,            -- unknown | verified | failed | stale
    integrity_at      BIGINT,
    integrity_reason  TEXT,
    connections       BIGINT NOT NULL
);
CREATE INDEX devices_status ON devices (status, id);
CREATE INDEX devices_ca ON devices (ca_id, id);
CREATE INDEX devices_firmware ON devices (firmware_version, id);
CREATE INDEX devices_integrity ON devices (integrity, id);
CREATE INDEX devices_last_seen ON devices (last_seen);

CREATE TABLE device_labels (
    device_id TEXT NOT NULL REFERENCES devices (id),
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_labels_kv ON device_labels (key, value, device_id);

CREATE TABLE events (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    device_id TEXT,
    ca_id     TEXT,
    reason    TEXT,
    detail    TEXT                              -- JSON
);
CREATE INDEX events_device ON events (device_id, id);
CREATE INDEX events_kind ON events (kind, id);

CREATE TABLE telemetry (
    id          BIGSERIAL PRIMARY KEY,
    device_id   TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    qos         BIGINT NOT NULL,
    source      TEXT NOT NULL,                  -- mqtt | lorawan | sigfox
    received_at BIGINT NOT NULL
);
CREATE INDEX telemetry_device_time ON telemetry (device_id, received_at, id);
CREATE INDEX telemetry_time ON telemetry (received_at);

CREATE TABLE pending_commands (
    id           BIGSERIAL PRIMARY KEY,
    device_id    TEXT NOT NULL,
    topic        TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    qos          BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX pending_commands_device ON pending_commands (device_id, id);

CREATE TABLE attestation_challenges (
    nonce      TEXT PRIMARY KEY,                -- hex
    device_id  TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX attestation_challenges_device ON attestation_challenges (device_id, issued_at);

CREATE TABLE attestation_results (
    id               BIGSERIAL PRIMARY KEY,
    device_id        TEXT NOT NULL,
    at               BIGINT NOT NULL,
    format           TEXT NOT NULL,
    result           TEXT NOT NULL,             -- verified | failed
    reason           TEXT,
    firmware_name    TEXT,
    firmware_version TEXT,
    firmware_digest  TEXT
);
CREATE INDEX attestation_results_device ON attestation_results (device_id, id);

CREATE TABLE firmware_references (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    digest     TEXT NOT NULL,                   -- hex
    signer_id  TEXT,
    status     TEXT NOT NULL,                   -- allowed | blocked
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (name, version, digest)
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL UNIQUE,          -- SHA-256 of the secret; the secret is never stored
    role         TEXT NOT NULL,                 -- admin | operator | viewer
    description  TEXT,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE TABLE lorawan_devices (
    dev_eui       TEXT PRIMARY KEY,             -- hex, 16 chars
    join_eui      TEXT NOT NULL,
    mac_version   TEXT NOT NULL,
    app_key       BYTEA NOT NULL,               -- sealed
    nwk_key       BYTEA,                        -- sealed (LoRaWAN 1.1)
    dev_addr      TEXT,
    session_keys  BYTEA,                        -- sealed (JSON of the session keys)
    f_cnt_up      BIGINT,
    n_f_cnt_down  BIGINT NOT NULL,
    a_f_cnt_down  BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX lorawan_devices_dev_addr ON lorawan_devices (dev_addr);

CREATE TABLE lorawan_dev_nonces (
    dev_eui   TEXT NOT NULL REFERENCES lorawan_devices (dev_eui),
    dev_nonce BIGINT NOT NULL,
    used_at   BIGINT NOT NULL,
    PRIMARY KEY (dev_eui, dev_nonce)
);

CREATE TABLE sigfox_devices (
    device_id  TEXT PRIMARY KEY,                -- hex
    nak        BYTEA NOT NULL,                  -- sealed
    last_seq   BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
