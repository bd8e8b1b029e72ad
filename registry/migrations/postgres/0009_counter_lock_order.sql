-- Counter rows are locked in one order by every transaction (found at scale-out size).
--
-- The statement-level triggers of 0002, 0003 and 0008 upsert counter rows (fleet_counts,
-- event_hourly) in the order their GROUP BY happened to produce. Two transactions that touch
-- overlapping rows in different orders deadlock: six gateways registering 100,000 new devices
-- at once into one PostgreSQL database hit 106 deadlocks in 80 s, each costing PostgreSQL's
-- deadlock_timeout (1 s) and a rolled-back registration batch, and onboarding stalled. Sorting
-- each upsert by the counter's key makes every transaction take the row locks of a trigger in
-- the same order; the triggers themselves fire in name order, so the whole sequence agrees.

CREATE OR REPLACE FUNCTION fleet_counts_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'status' AS dimension, t.status AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
        UNION ALL SELECT 'integrity' AS dimension, t.integrity AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
        UNION ALL SELECT 'firmware' AS dimension, COALESCE(t.firmware_version, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION fleet_counts_deleted() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'status' AS dimension, t.status AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
        UNION ALL SELECT 'integrity' AS dimension, t.integrity AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
        UNION ALL SELECT 'firmware' AS dimension, COALESCE(t.firmware_version, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION fleet_counts_updated() RETURNS trigger AS $$
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
    ORDER BY 1, 2, 3
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION fleet_counts_more_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'ca' AS dimension, t.ca_id AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
        UNION ALL SELECT 'key' AS dimension, COALESCE(t.cert_key, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
        UNION ALL SELECT 'digest' AS dimension, COALESCE(t.firmware_digest, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, 1 AS n FROM new_rows t
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION fleet_counts_more_deleted() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'ca' AS dimension, t.ca_id AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
        UNION ALL SELECT 'key' AS dimension, COALESCE(t.cert_key, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
        UNION ALL SELECT 'digest' AS dimension, COALESCE(t.firmware_digest, 'unknown') AS value, ascii(right(t.id, 1)) % 16 AS shard, -1 AS n FROM old_rows t
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION fleet_counts_more_updated() RETURNS trigger AS $$
BEGIN
    INSERT INTO fleet_counts (dimension, value, shard, n)
    SELECT dimension, value, shard, SUM(n) FROM (
        SELECT 'ca' AS dimension, o.ca_id AS value, ascii(right(o.id, 1)) % 16 AS shard, -1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.ca_id IS DISTINCT FROM n.ca_id
        UNION ALL SELECT 'key' AS dimension, COALESCE(o.cert_key, 'unknown') AS value, ascii(right(o.id, 1)) % 16 AS shard, -1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.cert_key IS DISTINCT FROM n.cert_key
        UNION ALL SELECT 'digest' AS dimension, COALESCE(o.firmware_digest, 'unknown') AS value, ascii(right(o.id, 1)) % 16 AS shard, -1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.firmware_digest IS DISTINCT FROM n.firmware_digest
        UNION ALL SELECT 'ca' AS dimension, n.ca_id AS value, ascii(right(n.id, 1)) % 16 AS shard, 1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.ca_id IS DISTINCT FROM n.ca_id
        UNION ALL SELECT 'key' AS dimension, COALESCE(n.cert_key, 'unknown') AS value, ascii(right(n.id, 1)) % 16 AS shard, 1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.cert_key IS DISTINCT FROM n.cert_key
        UNION ALL SELECT 'digest' AS dimension, COALESCE(n.firmware_digest, 'unknown') AS value, ascii(right(n.id, 1)) % 16 AS shard, 1 AS n FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.firmware_digest IS DISTINCT FROM n.firmware_digest
    ) delta GROUP BY dimension, value, shard HAVING SUM(n) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (dimension, value, shard) DO UPDATE SET n = fleet_counts.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION event_hourly_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO event_hourly (kind, hour, shard, n)
    SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM new_rows
    WHERE kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
                   'device.clone_suspected', 'api.unauthorized', 'api.forbidden',
                   'attestation.verified', 'attestation.failed', 'attestation.stale',
                   'lorawan.uplink_rejected', 'lorawan.join_refused', 'lorawan.join_accepted',
                   'sigfox.frame_rejected', 'sigfox.callback_rejected')
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (kind, hour, shard) DO UPDATE SET n = event_hourly.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
