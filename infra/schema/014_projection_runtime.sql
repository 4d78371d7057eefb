-- One projection runtime (projections/runtime.py): one cursor table, one place for what a
-- projection could not apply.

-- consumer_offsets is the one cursor table: Kafka-fed projections keep (topic, partition, next
-- offset); journal followers keep topic 'journal', partition 0, the next seq to read. The
-- ledger's cursor moves here; ledger_cursor keeps only the one-off fold of books kept before the
-- state tables (011): seq is how far that fold must go, state_seq how far it went.
INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
SELECT 'ledger', 'journal', 0, seq + 1 FROM ledger_cursor WHERE name = 'ledger'
ON CONFLICT (consumer, topic, partition) DO NOTHING;

-- Each service role sees and moves only its own projections' positions; the relay, sending the
-- Kafka consumers back to 0 after the broker lost data, can move no journal follower.
ALTER TABLE consumer_offsets ENABLE ROW LEVEL SECURITY;
CREATE POLICY offsets_worker ON consumer_offsets TO gongpei_worker
    USING (consumer IN ('tracking', 'sla')) WITH CHECK (consumer IN ('tracking', 'sla'));
CREATE POLICY offsets_ledger ON consumer_offsets TO gongpei_ledger
    USING (consumer = 'ledger') WITH CHECK (consumer = 'ledger');
CREATE POLICY offsets_sms ON consumer_offsets TO gongpei_sms
    USING (consumer = 'sms') WITH CHECK (consumer = 'sms');
CREATE POLICY offsets_relay ON consumer_offsets FOR UPDATE TO gongpei_relay
    USING (topic <> 'journal') WITH CHECK (topic <> 'journal');

-- Events a projection could not decode or apply: set aside with the reason, never retried in a
-- loop, never skipped silently (counted in gongpei_projection_set_aside_total, alerted on, listed
-- by `gongpei projections`). The body is the stored wire form: phones in it are sealed.
CREATE TABLE projection_set_aside (
    projection   text        NOT NULL,
    topic        text        NOT NULL,     -- Kafka topic, or 'journal'
    partition    integer     NOT NULL,
    position     bigint      NOT NULL,     -- Kafka offset, or journal seq
    event_id     text,
    reason       text        NOT NULL,
    body         text        NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition, position)
);

-- The SMS planner's cursor moves here too, and what it had set aside joins projection_set_aside.
INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
SELECT 'sms', 'journal', 0, seq + 1 FROM sms_cursor WHERE name = 'sms'
ON CONFLICT (consumer, topic, partition) DO NOTHING;
INSERT INTO projection_set_aside (projection, topic, partition, position, event_id, reason, body,
                                  set_aside_at)
SELECT 'sms', 'journal', 0, s.seq, s.event_id, s.error, j.body::text, s.at
FROM sms_skipped s JOIN journal j ON j.seq = s.seq
ON CONFLICT DO NOTHING;
DROP TABLE sms_cursor;
DROP TABLE sms_skipped;
