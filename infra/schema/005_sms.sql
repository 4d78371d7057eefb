-- Arrival SMS. Everything here but sms_attempts is derived from the journal by the SMS service and
-- can be rebuilt from it; sms_attempts is the log of calls made to providers (a side effect that
-- already happened), kept through rebuilds so that no message is sent twice.

CREATE TABLE sms_cursor (
    name text PRIMARY KEY,
    seq  bigint NOT NULL DEFAULT 0
);

-- Per parcel: who it is for (latest manifest line), whether they consented to station delivery,
-- and its latest collection scan (a late-uploaded `stored` scan before it announces nothing).
CREATE TABLE sms_recipients (
    waybill       text PRIMARY KEY,
    brand         text,
    phone         text,                       -- read only by the sender, never served
    registered_at timestamptz,
    known_at      timestamptz,                -- when the manifest reached the platform
    consent       boolean,
    consent_at    timestamptz,
    collected_at  timestamptz,
    collected_by  text
);

-- Per village point: the running number pickup codes are allocated from.
CREATE TABLE sms_points (
    node_id text PRIMARY KEY,
    next_n  integer NOT NULL DEFAULT 1
);

-- One row per arrival: a parcel's first `stored` scan at a village point, until it is collected.
CREATE TABLE sms_arrivals (
    arrival_id      text PRIMARY KEY,
    waybill         text NOT NULL,
    brand           text NOT NULL,
    node_id         text NOT NULL,
    stored_at       timestamptz NOT NULL,      -- the scan's event time (reminders count from it)
    known_at        timestamptz NOT NULL,      -- when the platform learned of it (digests use it)
    pickup_code     text,
    waiting         boolean NOT NULL DEFAULT true,
    closed_at       timestamptz,
    closed_by       text,                      -- delivered | returned | out_for_delivery | problem
    digest_id       text,                      -- the open digest it waits in
    arrival_sms     text,                      -- the SMS that announced it
    reminders       integer NOT NULL DEFAULT 0,
    call_reason     text                       -- why the station keeper should phone instead
);
CREATE UNIQUE INDEX sms_arrivals_one_open ON sms_arrivals (waybill, node_id) WHERE waiting;
CREATE INDEX sms_arrivals_node_waiting ON sms_arrivals (node_id) WHERE waiting;
CREATE INDEX sms_arrivals_waybill ON sms_arrivals (waybill);
CREATE INDEX sms_arrivals_digest ON sms_arrivals (digest_id) WHERE digest_id IS NOT NULL;

-- Open digests: arrivals for one phone at one point, collected until closes_at.
CREATE TABLE sms_digests (
    digest_id  text PRIMARY KEY,
    node_id    text NOT NULL,
    phone      text NOT NULL,
    opened_at  timestamptz NOT NULL,
    closes_at  timestamptz NOT NULL
);
CREATE INDEX sms_digests_phone_node ON sms_digests (phone, node_id);
CREATE INDEX sms_digests_closes ON sms_digests (closes_at);

-- Every SMS the platform decided to send, and where it is.
CREATE TABLE sms_messages (
    sms_id        text PRIMARY KEY,
    kind          text NOT NULL,
    stage         integer NOT NULL,
    node_id       text NOT NULL,
    phone         text NOT NULL,               -- read only by the sender, never served
    phone_masked  text NOT NULL,
    text          text NOT NULL,
    template_code text NOT NULL,
    params        jsonb NOT NULL,
    segments      integer NOT NULL,
    consented     boolean NOT NULL,
    send_after    timestamptz NOT NULL,
    first_known_at timestamptz NOT NULL,
    requested_at  timestamptz NOT NULL,
    state         text NOT NULL CHECK (state IN ('requested', 'submitted', 'delivered', 'failed',
                                                 'cancelled')),
    provider      text,
    provider_message_id text,
    next_attempt_at timestamptz NOT NULL,
    submitted_at  timestamptz,
    delivered_at  timestamptz,
    failure_code  text,
    permanent     boolean
);
CREATE INDEX sms_messages_due ON sms_messages (next_attempt_at) WHERE state = 'requested';
CREATE INDEX sms_messages_phone ON sms_messages (phone, submitted_at);
CREATE INDEX sms_messages_provider_id ON sms_messages (provider, provider_message_id);

CREATE TABLE sms_message_parcels (
    sms_id     text NOT NULL REFERENCES sms_messages ON DELETE CASCADE,
    waybill    text NOT NULL,
    brand      text NOT NULL,
    arrival_id text NOT NULL,
    pickup_code text NOT NULL,
    PRIMARY KEY (sms_id, waybill)
);
CREATE INDEX sms_message_parcels_waybill ON sms_message_parcels (waybill);

-- Journal events the SMS service could not apply and set aside (the kind of error only).
CREATE TABLE sms_skipped (
    seq      bigint PRIMARY KEY,
    event_id text NOT NULL,
    error    text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);

-- Calls made to providers, written and committed before each call (the sender's own log).
CREATE TABLE sms_attempts (
    sms_id     text NOT NULL,
    attempt    integer NOT NULL,
    provider   text NOT NULL,
    started_at timestamptz NOT NULL,
    outcome    text,
    PRIMARY KEY (sms_id, attempt)
);

-- A brand sees the SMS that named its parcels, and nothing else.
ALTER TABLE sms_message_parcels ENABLE ROW LEVEL SECURITY;
ALTER TABLE sms_message_parcels FORCE ROW LEVEL SECURITY;
CREATE POLICY sms_message_parcels_by_brand ON sms_message_parcels
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
ALTER TABLE sms_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE sms_messages FORCE ROW LEVEL SECURITY;
CREATE POLICY sms_messages_by_brand ON sms_messages
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR EXISTS (SELECT 1 FROM sms_message_parcels p WHERE p.sms_id = sms_messages.sms_id));
ALTER TABLE sms_arrivals ENABLE ROW LEVEL SECURITY;
ALTER TABLE sms_arrivals FORCE ROW LEVEL SECURITY;
CREATE POLICY sms_arrivals_by_brand ON sms_arrivals
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
