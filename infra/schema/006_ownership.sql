-- Waybill ownership: a waybill belongs to the brand whose manifest registered it first (or, until
-- a manifest comes, to the brand its first scan was made under). Checked at ingest, in the same
-- transaction as the journal append; see domain/ownership.py and docs/security.md.

CREATE TABLE waybill_owners (
    waybill             text PRIMARY KEY,
    brand               text NOT NULL,
    registered          boolean NOT NULL,      -- false: claimed by scans, no manifest yet
    destination_village text,                  -- from the owner's latest manifest
    first_event_id      text NOT NULL,
    first_seen_at       timestamptz NOT NULL,  -- recorded_at of the event that claimed it
    registered_at       timestamptz
);

-- What the county manager resolves: events refused because another brand owns the waybill, and
-- event ids re-sent with different content. The refused content is kept for inspection, phone
-- masked (a conflict is evidence, not a second copy of personal data).
CREATE TABLE ingest_conflicts (
    id             bigserial PRIMARY KEY,
    kind           text NOT NULL,
    event_id       text NOT NULL,
    event_type     text NOT NULL,
    waybill        text,
    owner_brand    text,                       -- the brand the waybill belongs to
    claimed_brand  text NOT NULL,              -- the brand the refused event was sent under
    token_id       bigint NOT NULL,
    device_id      text NOT NULL,
    recorded_at    timestamptz NOT NULL,
    body           jsonb NOT NULL,             -- the refused event as sent, phone masked
    resolved_at    timestamptz,
    resolved_by    text,
    resolution     text
);
CREATE INDEX ingest_conflicts_open ON ingest_conflicts (recorded_at DESC) WHERE resolved_at IS NULL;
CREATE INDEX ingest_conflicts_waybill ON ingest_conflicts (waybill);

-- What a device sent, as a digest: the same event_id with a different digest is a conflict, not a
-- duplicate. NULL for events the platform writes itself (their ids are derived from their content).
ALTER TABLE journal ADD COLUMN content_hash bytea;

-- A scanner installed at a node (a village point's keeper): consent it records is trusted for the
-- parcels that point serves.
ALTER TABLE tokens ADD COLUMN node_id text;
