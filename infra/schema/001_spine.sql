-- The spine: event journal (system of record), relay state, tracking read models, tokens.
-- Applied by the schema owner; the API and workers connect as the restricted role gongpei_app.

CREATE TABLE journal (
    seq            bigserial PRIMARY KEY,          -- relay order = commit order (appends are serialised)
    event_id       text        NOT NULL UNIQUE,    -- the device's idempotency key, forever
    type           text        NOT NULL,
    schema_version integer     NOT NULL,
    brand          text        NOT NULL,
    partition_key  text        NOT NULL,           -- waybill or trip: Kafka key, keeps per-entity order
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    device_id      text        NOT NULL,
    body           jsonb       NOT NULL            -- the envelope's wire form (upcast to current)
);
CREATE INDEX journal_partition_key ON journal (partition_key);

-- How far the relay has published the journal to Kafka.
CREATE TABLE relay_cursor (
    name text PRIMARY KEY,
    seq  bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- What the broker acknowledged per partition: the highest offset, and the lowest offset of the
-- latest page. A partition that now ends at or below page_low has lost data we published.
CREATE TABLE relay_partition_marks (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    acked_offset bigint NOT NULL,
    page_low    bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Consumer offsets stored in the same transaction as the read-model rows they produced.
CREATE TABLE consumer_offsets (
    consumer   text    NOT NULL,
    topic      text    NOT NULL,
    partition  integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Tracking projection: every event a parcel has seen (the inbox: event_id dedupes redeliveries)…
CREATE TABLE tracking_events (
    event_id    text        PRIMARY KEY,
    waybill     text        NOT NULL,
    brand       text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    body        jsonb       NOT NULL
);
CREATE INDEX tracking_events_waybill ON tracking_events (waybill);

-- … and the parcel's derived current view.
CREATE TABLE parcels (
    waybill       text PRIMARY KEY,
    brand         text NOT NULL,
    status        text NOT NULL,
    public_code   integer NOT NULL,
    destination_village text,
    current_node  text,
    misrouted     boolean NOT NULL DEFAULT false,
    phone_last4   text,
    phone_masked  text,
    last_event_at timestamptz,
    view          jsonb NOT NULL,               -- timeline and details, never an unmasked phone
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parcels_brand_status ON parcels (brand, status);

-- Bearer tokens: only the SHA-256 of each token is kept.
CREATE TABLE tokens (
    id          bigserial PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN ('device', 'user')),
    role        text NOT NULL CHECK (role IN ('scanner', 'brand-system', 'brand', 'manager', 'finance', 'admin')),
    name        text NOT NULL,
    brands      text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Tenancy in SQL: a session sees a brand's rows only when it has set gongpei.brand_scope to that
-- brand ('*' for manager/admin). Unset means nothing: deny by default.
ALTER TABLE parcels ENABLE ROW LEVEL SECURITY;
ALTER TABLE parcels FORCE ROW LEVEL SECURITY;
CREATE POLICY parcels_by_brand ON parcels
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
ALTER TABLE tracking_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE tracking_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tracking_events_by_brand ON tracking_events
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
