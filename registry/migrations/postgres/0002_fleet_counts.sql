-- Dashboard counts maintained by the database itself, so they are exact whatever code path
-- changes a device (JITR, lifecycle, bulk CA revocation, an operator's SQL).
--
-- Measured on 1,000,000 devices: the GROUP BY summary took 585 ms (target 50 ms). Per-row
-- triggers were tried first and were quadratic in bulk statements here: each row's upsert made
-- a new version of the same counter row inside one transaction, which the next upsert had to
-- walk. These statement-level triggers aggregate each statement's transition table once.
-- Rows are sharded by the last character of the device id so that concurrent registrations do
-- not queue on one counter row.

CREATE TABLE fleet_counts (
    dimension TEXT NOT NULL,    -- status | integrity | firmware
    value     TEXT NOT NULL,
    shard     BIGINT NOT NULL,
    n         BIGINT NOT NULL,
    PRIMARY KEY (dimension, value, shard)
);

CREATE FUNCTION fleet_counts_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'status' AS dimension, t.status AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
        UNION ALL SELECT 'integrity' AS dimension, t.integrity AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
        UNION ALL SELECT 'firmware' AS dimension, COALESCE(t.firmware_version, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION fleet_counts_deleted() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'status' AS dimension, t.status AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
        UNION ALL SELECT 'integrity' AS dimension, t.integrity AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
        UNION ALL SELECT 'firmware' AS dimension, COALESCE(t.firmware_version, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION fleet_counts_updated() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'status' AS dimension, o.status AS value, ascii(right(o.id, 1)) % 16 AS shard, -1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.status IS DISTINCT FROM n.status
        UNION ALL SELECT 'integrity' AS dimension, o.integrity AS value, ascii(right(o.id, 1)) % 16 AS shard, -1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.integrity IS DISTINCT FROM n.integrity
        UNION ALL SELECT 'firmware' AS dimension, COALESCE(o.firmware_version, 'unknown') AS value, ascii(right(o.id, 1)) % 16 AS shard, -1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.firmware_version IS DISTINCT FROM n.firmware_version
        UNION ALL SELECT 'status' AS dimension, n.status AS value, ascii(right(n.id, 1)) % 16 AS shard, 1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.status IS DISTINCT FROM n.status
        UNION ALL SELECT 'integrity' AS dimension, n.integrity AS value, ascii(right(n.id, 1)) % 16 AS shard, 1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.integrity IS DISTINCT FROM n.integrity
        UNION ALL SELECT 'firmware' AS dimension, COALESCE(n.firmware_version, 'unknown') AS value, ascii(right(n.id, 1)) % 16 AS shard, 1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.firmware_version IS DISTINCT FROM n.firmware_version
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER devices_fleet_counts_insert AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fleet_counts_inserted();
CREATE TRIGGER devices_fleet_counts_delete AFTER DELETE ON devices
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION fleet_counts_deleted();
CREATE TRIGGER devices_fleet_counts_update AFTER UPDATE ON devices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fleet_counts_updated();

-- Devices that existed before this migration.
INSERT INTO fleet_counts (dimension, value, shard, n)
SELECT 'status', status, ascii(right(id, 1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3
UNION ALL SELECT 'integrity', integrity, ascii(right(id, 1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3
UNION ALL SELECT 'firmware', COALESCE(firmware_version, 'unknown'), ascii(right(id, 1)) % 16, COUNT(*) FROM devices GROUP BY 2, 3;
