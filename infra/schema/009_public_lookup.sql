-- The public lookup's limits (domain/lookup.py): one GCRA bucket per key, kept as the instant
-- the bucket drains ("theoretical arrival time"). Keys name a client address, an address and a
-- waybill, or a waybill: "a:<addr>", "an:<addr>", "aw:<addr>|<waybill>", "w:<waybill>". A row
-- whose tat has passed is an empty bucket; a day later it is pruned (until then it says the
-- address has guessed on that waybill), so an address is kept at most two days. A key never
-- filled holds 1970-01-01.
-- Replaces the per-waybill-hour counter of 004 (public_lookup_failures, which let a stranger
-- lock the recipient out; no longer read or written). It is not dropped here because grants.sql,
-- re-applied on every migrate, still names it: drop both together.

CREATE TABLE public_lookup_limits (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL
);
CREATE INDEX public_lookup_limits_tat ON public_lookup_limits (tat);
