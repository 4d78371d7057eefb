-- On-time delivery: per parcel per leg, a daily aggregate per slice, and fixed-run punctuality.

CREATE TABLE sla_events (
    event_id text PRIMARY KEY,
    brand    text NOT NULL,
    waybill  text,
    trip_id  text,
    body     jsonb NOT NULL
);
CREATE INDEX sla_events_waybill ON sla_events (waybill);
CREATE INDEX sla_events_trip ON sla_events (trip_id);

CREATE TABLE sla_legs (
    waybill      text NOT NULL,
    leg          text NOT NULL,
    brand        text NOT NULL,
    route_id     text NOT NULL DEFAULT '',
    township     text NOT NULL DEFAULT '',
    village      text NOT NULL DEFAULT '',
    start_at     timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    at_risk_at   timestamptz NOT NULL,
    end_at       timestamptz,
    outcome      text NOT NULL CHECK (outcome IN ('on_time', 'late', 'open')),
    minutes_over integer,
    cause        text,
    day          date NOT NULL,
    start_event  text NOT NULL,
    end_event    text,
    PRIMARY KEY (waybill, leg)
);
CREATE INDEX sla_legs_day ON sla_legs (day, leg);
CREATE INDEX sla_legs_open ON sla_legs (due_at) WHERE outcome = 'open';
-- Breaches are a few percent of a day's legs: read them without scanning the day.
CREATE INDEX sla_legs_late ON sla_legs (day, minutes_over DESC) WHERE outcome = 'late';
CREATE INDEX sla_legs_late_cause ON sla_legs (day, cause) WHERE outcome = 'late';

-- Finished legs counted per day and slice: a day's rates are read from here, not from sla_legs.
CREATE TABLE sla_daily (
    day      date NOT NULL,
    leg      text NOT NULL,
    route_id text NOT NULL,
    township text NOT NULL,
    village  text NOT NULL,
    brand    text NOT NULL,
    on_time  integer NOT NULL,
    late     integer NOT NULL,
    PRIMARY KEY (day, leg, route_id, township, village, brand)
);

CREATE TABLE sla_runs (
    trip_id       text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('departed', 'arrived')),
    node_id       text NOT NULL,
    route_id      text NOT NULL,
    run_id        text NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    occurred_at   timestamptz NOT NULL,
    day           date NOT NULL,
    delay_minutes integer NOT NULL,
    PRIMARY KEY (trip_id, kind, node_id)
);
CREATE INDEX sla_runs_day ON sla_runs (day);

ALTER TABLE sla_legs ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_legs FORCE ROW LEVEL SECURITY;
CREATE POLICY sla_legs_by_brand ON sla_legs
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
ALTER TABLE sla_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY sla_daily_by_brand ON sla_daily
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
ALTER TABLE sla_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE sla_events FORCE ROW LEVEL SECURITY;
CREATE POLICY sla_events_by_brand ON sla_events
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
