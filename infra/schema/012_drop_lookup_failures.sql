-- The per-waybill-hour counter of 004 let a stranger lock the recipient out; 009's limits replaced
-- it and nothing reads or writes it any more. Dropped together with its grant (grants.sql).
DROP TABLE public_lookup_failures;
