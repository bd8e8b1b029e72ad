-- Dashboard counts maintained by the database itself (see migrations/postgres/0002 for why).
-- SQLite has a single writer, so the shards only keep the schema identical to PostgreSQL's.

CREATE TABLE fleet_counts (
    dimension TEXT NOT NULL,    -- status | integrity | firmware
    value     TEXT NOT NULL,
    shard     BIGINT NOT NULL,
    n         BIGINT NOT NULL,
    PRIMARY KEY (dimension, value, shard)
);

CREATE TRIGGER devices_fleet_counts_insert AFTER INSERT ON devices BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('status', NEW.status, unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('integrity', NEW.integrity, unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('firmware', COALESCE(NEW.firmware_version, 'unknown'), unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

CREATE TRIGGER devices_fleet_counts_delete AFTER DELETE ON devices BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('status', OLD.status, unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('integrity', OLD.integrity, unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('firmware', COALESCE(OLD.firmware_version, 'unknown'), unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
END;

CREATE TRIGGER devices_fleet_counts_status AFTER UPDATE OF status ON devices
    WHEN OLD.status IS NOT NEW.status BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('status', OLD.status, unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('status', NEW.status, unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

CREATE TRIGGER devices_fleet_counts_integrity AFTER UPDATE OF integrity ON devices
    WHEN OLD.integrity IS NOT NEW.integrity BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('integrity', OLD.integrity, unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('integrity', NEW.integrity, unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

CREATE TRIGGER devices_fleet_counts_firmware AFTER UPDATE OF firmware_version ON devices
    WHEN OLD.firmware_version IS NOT NEW.firmware_version BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('firmware', COALESCE(OLD.firmware_version, 'unknown'), unicode(substr(OLD.id, -1)) % 16, -1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (-1);
    INSERT INTO fleet_counts (dimension, value, shard, n) VALUES ('firmware', COALESCE(NEW.firmware_version, 'unknown'), unicode(substr(NEW.id, -1)) % 16, 1)
        ON CONFLICT (dimension, value, shard) DO UPDATE SET n = n + (1);
END;

-- Devices that existed before this migration.
INSERT INTO fleet_counts (dimension, value, shard, n)
SELECT 'status', status, unicode(substr(id, -1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3
UNION ALL SELECT 'integrity', integrity, unicode(substr(id, -1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3
UNION ALL SELECT 'firmware', COALESCE(firmware_version, 'unknown'), unicode(substr(id, -1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3;
