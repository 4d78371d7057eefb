-- Upward produce (农产品上行, issue 13): the SLA inbox keeps what the perishable clocks read of a
-- hand-in, and each handed-in parcel is kept once for the upward panel and the monthly report.

ALTER TABLE sla_events
    ADD COLUMN perishable text,      -- parcel.handed_in: its class of [perishables] (NULL: none)
    ADD COLUMN weight_g   integer;   -- parcel.handed_in: its weight

-- One row per handed-in parcel: its earliest hand-in (by event time, then event id), counted on
-- the county day it happened. Kept by the SLA projection (projections/sla_store.py).
CREATE TABLE sla_handins (
    waybill     text PRIMARY KEY,
    brand       text NOT NULL,
    event_id    text NOT NULL,
    occurred_at timestamptz NOT NULL,
    day         date NOT NULL,
    route_id    text NOT NULL,   -- the slices of sla_legs, so one filter narrows both
    township    text NOT NULL,
    village     text NOT NULL,
    perishable  text,
    weight_g    integer NOT NULL
);
CREATE INDEX sla_handins_day ON sla_handins (day);

ALTER TABLE sla_handins ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_handins FORCE ROW LEVEL SECURITY;
CREATE POLICY sla_handins_by_brand ON sla_handins
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
