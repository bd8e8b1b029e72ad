-- Operator API and fleet audit (issue 5); see migrations/postgres/0003 for the why.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

ALTER TABLE devices ADD COLUMN cert_key TEXT;
CREATE INDEX devices_cert_not_after ON devices (cert_not_after);
CREATE INDEX devices_cert_key ON devices (cert_key, id);
CREATE INDEX devices_firmware_digest ON devices (firmware_digest, id);
CREATE INDEX events_kind_at ON events (kind, at);
CREATE INDEX events_at ON events (at);

CREATE TRIGGER devices_fleet_counts_more_insert AFTER INSERT ON devices BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('ca', NEW.ca_id, unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('key', COALESCE(NEW.cert_key, 'unknown'), unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('digest', COALESCE(NEW.firmware_digest, 'unknown'), unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

CREATE TRIGGER devices_fleet_counts_more_delete AFTER DELETE ON devices BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('ca', OLD.ca_id, unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('key', COALESCE(OLD.cert_key, 'unknown'), unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('digest', COALESCE(OLD.firmware_digest, 'unknown'), unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
END;

CREATE TRIGGER devices_fleet_counts_ca AFTER UPDATE OF ca_id ON devices
    WHEN OLD.ca_id IS NOT NEW.ca_id BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('ca', OLD.ca_id, unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('ca', NEW.ca_id, unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

CREATE TRIGGER devices_fleet_counts_key AFTER UPDATE OF cert_key ON devices
    WHEN OLD.cert_key IS NOT NEW.cert_key BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('key', COALESCE(OLD.cert_key, 'unknown'), unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('key', COALESCE(NEW.cert_key, 'unknown'), unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

CREATE TRIGGER devices_fleet_counts_digest AFTER UPDATE OF firmware_digest ON devices
    WHEN OLD.firmware_digest IS NOT NEW.firmware_digest BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('digest', COALESCE(OLD.firmware_digest, 'unknown'), unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('digest', COALESCE(NEW.firmware_digest, 'unknown'), unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

-- Devices that existed before this migration.
INSERT INTO fleet_counts (dimension, value, shard, n)
SELECT 'ca', ca_id, unicode(substr(id, -1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3
UNION ALL SELECT 'key', 'unknown', unicode(substr(id, -1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3
UNION ALL SELECT 'digest', COALESCE(firmware_digest, 'unknown'), unicode(substr(id, -1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3;

-- Onboarding and rejection rates: events per kind and hour (see migrations/postgres/0003).
CREATE TABLE event_hourly (
    kind  TEXT NOT NULL,
    hour  BIGINT NOT NULL,
    shard BIGINT NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (kind, hour, shard)
);

CREATE TRIGGER events_hourly_insert AFTER INSERT ON events
    WHEN NEW.kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
                      'device.clone_suspected', 'api.unauthorized', 'api.forbidden') BEGIN
    INSERT INTO event_hourly (kind, hour, shard, n) VALUES (NEW.kind, (NEW.at / 3600000) * 3600000, NEW.id % 16, 1)
        ON CONFLICT (kind, hour, shard) DO UPDATE SET n = n + 1;
END;

INSERT INTO event_hourly (kind, hour, shard, n)
SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM events
WHERE kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
               'device.clone_suspected', 'api.unauthorized', 'api.forbidden')
GROUP BY 1, 2, 3;
