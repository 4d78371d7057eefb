-- Failed public lookups per waybill and hour: guessing the last four digits is capped.
CREATE TABLE public_lookup_failures (
    waybill text NOT NULL,
    hour    timestamptz NOT NULL,
    failures integer NOT NULL,
    PRIMARY KEY (waybill, hour)
);
