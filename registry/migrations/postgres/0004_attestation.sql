-- Attestation and firmware integrity (issue 6).
--
-- * provisioning_cas.attestation_policy: the CA's appraisal policy as JSON (on failure:
--   quarantine or flag; allowed PSA lifecycle states; freshness window). NULL = the defaults.
-- * attestation_results.detail: what the evidence said (claims summary, failed check and claim).
-- * Indexes for the two sweeps: stale verdicts (integrity, integrity_at) and expired nonces.
-- * attestation.verified / attestation.failed / attestation.stale join the hourly rate counters.

ALTER TABLE provisioning_cas ADD COLUMN attestation_policy TEXT;
ALTER TABLE attestation_results ADD COLUMN detail TEXT;
CREATE INDEX devices_integrity_at ON devices (integrity, integrity_at);
CREATE INDEX attestation_challenges_expires ON attestation_challenges (expires_at);

CREATE OR REPLACE FUNCTION event_hourly_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO event_hourly (kind, hour, shard, n)
    SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM new_rows
    WHERE kind IN ('device.registered', 'chain.rejected', 'device.refused', 'device.acl_violation',
                   'device.clone_suspected', 'api.unauthorized', 'api.forbidden',
                   'attestation.verified', 'attestation.failed', 'attestation.stale')
    GROUP BY 1, 2, 3
    ON CONFLICT (kind, hour, shard) DO UPDATE SET n = event_hourly.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

INSERT INTO event_hourly (kind, hour, shard, n)
SELECT kind, (at / 3600000) * 3600000, id % 16, COUNT(*) FROM events
WHERE kind IN ('attestation.verified', 'attestation.failed', 'attestation.stale')
GROUP BY 1, 2, 3
ON CONFLICT (kind, hour, shard) DO UPDATE SET n = event_hourly.n + excluded.n;
