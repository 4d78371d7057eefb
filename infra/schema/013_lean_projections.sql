-- Lean projection inboxes: each consumer keeps of an event only what it reads, once.
--
-- tracking_events becomes an inbox of ids (event_id dedupes; waybill, brand and occurred_at for
-- counting and tenancy): the parcel's timeline already lives in parcels.view, so a second copy of
-- the whole body was never read. sla_events keeps the facts the SLA clocks read (type, when,
-- where, which action, which trip, which destination, the timetable) in columns, so a parcel is
-- re-evaluated from a few narrow rows instead of re-parsing every event it ever had.
--
-- The `body` columns are no longer written and are emptied here (they held the sealed phone of
-- every manifest, one copy more of it than anything needs). They stay, nullable, because the
-- grants and the role tests name them; drop them together with those.

ALTER TABLE tracking_events ALTER COLUMN body DROP NOT NULL;
UPDATE tracking_events SET body = NULL WHERE body IS NOT NULL;

ALTER TABLE sla_events
    ALTER COLUMN body DROP NOT NULL,
    ADD COLUMN type                text,
    ADD COLUMN occurred_at         timestamptz,
    ADD COLUMN node_id             text,
    ADD COLUMN action              text,
    ADD COLUMN destination_village text,
    ADD COLUMN scheduled_at        timestamptz;

-- Existing rows: their facts, read once from the body they carried.
UPDATE sla_events SET
    type                = body->>'type',
    occurred_at         = (body->>'occurred_at')::timestamptz,
    node_id             = body->'payload'->>'node_id',
    action              = CASE WHEN body->>'type' = 'parcel.scanned'
                               THEN body->'payload'->>'action' END,
    destination_village = body->'payload'->>'destination_village',
    scheduled_at        = (body->'payload'->>'scheduled_at')::timestamptz,
    body                = NULL
WHERE body IS NOT NULL;

ALTER TABLE sla_events
    ALTER COLUMN type SET NOT NULL,
    ALTER COLUMN occurred_at SET NOT NULL;

-- Only loaded scans and vehicle moves name a trip: index those, not a NULL for every other row.
DROP INDEX sla_events_trip;
CREATE INDEX sla_events_trip ON sla_events (trip_id) WHERE trip_id IS NOT NULL;
