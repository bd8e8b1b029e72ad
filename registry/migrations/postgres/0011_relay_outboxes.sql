-- JetStream outboxes: what stored telemetry a gateway's relay still owes the bus.
--
-- A gateway with NATS publishes every message it stores to JetStream from memory, after the
-- commit. A gateway killed with messages still in that buffer, or whose buffer overflowed while
-- NATS was away, owes JetStream those messages. Each relay opens an outbox when it starts; the
-- gateway stamps every telemetry row it stores with it (`telemetry.relay_outbox`, 0: none), and
-- the relay records how far it has published (`published_through`: every row of the outbox with
-- an id up to it is in JetStream) and that it is alive (`alive_at`, ms since the epoch, every
-- second; 0 after a clean shutdown). An outbox whose relay is gone is adopted by a live one (the
-- same node at its restart, or any node once `alive_at` is stale), which publishes its rows
-- above `published_through` from the store under their original de-duplication ids, then
-- deletes it.
CREATE TABLE relay_outboxes (
    id                BIGSERIAL PRIMARY KEY,
    node              TEXT NOT NULL,
    published_through BIGINT NOT NULL,
    alive_at          BIGINT NOT NULL
);
ALTER TABLE telemetry ADD COLUMN relay_outbox BIGINT NOT NULL DEFAULT 0;
