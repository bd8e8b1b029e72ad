-- Attestation and firmware integrity (issue 6); see migrations/postgres/0004 for the why.

ALTER TABLE provisioning_cas ADD COLUMN attestation_policy TEXT;
ALTER TABLE attestation_results ADD COLUMN detail TEXT;
CREATE INDEX devices_integrity_at ON devices (integrity, integrity_at);
CREATE INDEX attestation_challenges_expires ON attestation_challenges (expires_at);

DROP TRIGGER events_hourly_insert;
CREATE TRIGGER events_hourly_insert AFTER INSERT ON events
    WHEN NEW.kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
                      'device.clone_suspected', 'api.unauthorized', 'api.forbidden',
                      'attestation.verified', 'attestation.failed', 'attestation.stale') BEGIN
    INSERT INTO event_hourly (kind, hour, shard, n) VALUES (NEW.kind, (NEW.at / 3600000) * 3600000, NEW.id % 16, 1)
        ON CONFLICT (kind, hour, shard) DO UPDATE SET n = n + 1;
END;

INSERT INTO event_hourly (kind, hour, shard, n)
SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM events
WHERE kind IN ('attestation.verified', 'attestation.failed', 'attestation.stale')
GROUP BY 1, 2, 3
ON CONFLICT (kind, hour, shard) DO UPDATE SET n = n + excluded.n;
