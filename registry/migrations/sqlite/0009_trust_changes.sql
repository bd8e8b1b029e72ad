-- Trust changes, counted in commit order.
--
-- Gateways learn of trust changes made by other processes (the CLI, other nodes) by polling.
-- The newest trust event's id alone cannot tell them: on PostgreSQL an id is taken when the row
-- is inserted, not when its transaction commits, so a revocation holding id 100 can commit after
-- a status change holding id 101 has been seen, and a poll comparing newest ids never notices
-- it. Every transaction that writes trust events adds their number to `changes` as its last
-- statement before COMMIT: the row lock orders those transactions, so a reader that sees
-- `changes = n` sees every trust event counted up to n, and a count that grew by more than the
-- events a poll finds past the newest id it had seen reveals a late commit. Nothing but COMMIT
-- follows the update, so holding this lock never waits on another and cannot deadlock.
CREATE TABLE trust_state (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    changes BIGINT NOT NULL
);
INSERT INTO trust_state (id, changes)
    SELECT 1, COUNT(*) FROM events
    WHERE kind IN ('ca.registered', 'ca.revoked', 'ca.serial_revoked', 'ca.crl_added', 'device.status');
