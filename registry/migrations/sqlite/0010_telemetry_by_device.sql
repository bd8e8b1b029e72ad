-- The per-device telemetry index, kept in sorted batches instead of row by row (SQLite only).
--
-- An index on (device_id, received_at, id) receives the messages of a thousand devices
-- interleaved: every row of a telemetry commit lands on its own device's leaf page, so a commit
-- of 500 messages wrote ~450 index pages to the WAL (two pwrite calls each) against ~20 table
-- pages. Under a QoS 1 flood that index was about 30 % of the gateway's CPU per message.
--
-- `telemetry_by_device` holds the same keys, but rows reach it after their commit, tens of
-- thousands at a time sorted by device (`Registry::index_telemetry`), so each leaf is written
-- once for many rows. `telemetry_index_state.indexed_through` is the highest telemetry id it
-- covers, moved by the transaction that writes a pass's last entries. SQLite has one writer and
-- AUTOINCREMENT ids, so ids are given in commit order: every row at or below the mark is
-- committed and indexed. A per-device read takes index entries up to the mark and the rows
-- above it from the table (the short unindexed tail), in one statement. A message is durable
-- when its telemetry row is; the index is derived and catches up after a crash.
CREATE TABLE telemetry_by_device (
    device_id   TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    id          INTEGER NOT NULL,
    PRIMARY KEY (device_id, received_at, id)
) WITHOUT ROWID;
INSERT INTO telemetry_by_device (device_id, received_at, id)
    SELECT device_id, received_at, id FROM telemetry ORDER BY device_id, received_at, id;

CREATE TABLE telemetry_index_state (
    id              BIGINT PRIMARY KEY CHECK (id = 1),
    indexed_through BIGINT NOT NULL
);
INSERT INTO telemetry_index_state (id, indexed_through)
    SELECT 1, COALESCE(MAX(id), 0) FROM telemetry;

DROP INDEX telemetry_device_time;

-- Whatever deletes a message (retention, an operator) deletes its index entry, as an index would.
CREATE TRIGGER telemetry_unindex AFTER DELETE ON telemetry
BEGIN
    DELETE FROM telemetry_by_device
    WHERE device_id = old.device_id AND received_at = old.received_at AND id = old.id;
END;
