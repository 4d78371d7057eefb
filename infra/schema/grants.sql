-- What each service's database role may do, and nothing more. Re-applied by `gongpei migrate`
-- on every run, after every privilege of these roles on the schema's tables and sequences was
-- revoked in the same transaction: this file is the whole truth (docs/security/roles.md).
--
-- None of these roles is a superuser or has BYPASSRLS; none owns a table, so none can ALTER,
-- DROP or TRUNCATE one, or switch its row-level security off. The schema owner (DATABASE_URL)
-- keeps those for migrations, `gongpei token` and `gongpei rebuild tracking|ledger`.
--
-- Adding a table: grant it below to the roles that need it, in their group, with the narrowest
-- privilege (column lists where a role must not see some columns); a table the API reads must
-- have row-level security, or be named as an exception in tests/integration/test_roles.py.

-- Nobody but the owner creates objects in the application's schema (PostgreSQL before 15 let
-- every role do so); run only where the migrator owns the schema.
DO $$
BEGIN
    IF pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'public'),
                   'USAGE') THEN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    END IF;
END $$;

-- ---------------------------------------------------------------------------- gongpei_api
-- The HTTP API: appends batches to the journal and answers queries for tokens. It faces the
-- internet, so it gets the least: it cannot read the journal beyond what deduplication needs
-- (the event ids; a resend's content hash once that column exists), reads every other table
-- it needs only through row-level security (a brand scope, or for tokens the hash of the token
-- presented), and reads no clear phone number column at all.
GRANT INSERT ON journal TO gongpei_api;
GRANT SELECT (event_id) ON journal TO gongpei_api;          -- ON CONFLICT (event_id), RETURNING
GRANT USAGE ON SEQUENCE journal_seq_seq TO gongpei_api;
DO $$  -- the hash of a resend's content, compared for conflicting resends (its own schema file)
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'public' AND table_name = 'journal'
                 AND column_name = 'content_hash') THEN
        GRANT SELECT (content_hash) ON journal TO gongpei_api;
    END IF;
END $$;
GRANT SELECT ON tokens TO gongpei_api;                       -- RLS: the presented token's row
-- When each token was last used: through a function, since a batch of tokens is never "the token
-- presented" (008); and who called what, added and read, never changed or removed (but pruned).
GRANT EXECUTE ON FUNCTION touch_tokens(bigint[], timestamptz[]) TO gongpei_api;
GRANT SELECT, INSERT ON access_log TO gongpei_api;
GRANT EXECUTE ON FUNCTION prune_access_log(integer) TO gongpei_api;
GRANT SELECT ON parcels TO gongpei_api;                      -- RLS by brand (masked phone only)
GRANT SELECT ON ledger_lines, settlement_events TO gongpei_api;          -- RLS by brand
GRANT SELECT ON ledger_periods TO gongpei_api;               -- no brand: a period is everyone's
GRANT SELECT ON sla_legs, sla_daily TO gongpei_api;          -- RLS by brand
GRANT SELECT ON sla_handins TO gongpei_api;                  -- RLS by brand (upward parcels)
GRANT SELECT ON sla_runs TO gongpei_api;                     -- no brand: fixed runs are shared
GRANT SELECT ON sms_message_parcels, sms_arrivals TO gongpei_api;        -- RLS by brand
GRANT SELECT (sms_id, kind, stage, node_id, phone_masked, text, template_code, params, segments,
              consented, send_after, first_known_at, requested_at, state, provider,
              provider_message_id, next_attempt_at, submitted_at, delivered_at, failure_code,
              permanent)
    ON sms_messages TO gongpei_api;                          -- RLS by brand; never `phone`
GRANT SELECT (waybill, brand, consent) ON sms_recipients TO gongpei_api; -- RLS; never `phone`
-- Waybill ownership, read and written in the ingest transaction across every brand (that is its
-- point: a competitor's claim must be seen); the conflicts it raises, for the county manager.
GRANT SELECT, INSERT, UPDATE ON waybill_owners TO gongpei_api;
GRANT SELECT, INSERT, UPDATE ON ingest_conflicts TO gongpei_api;
GRANT USAGE ON SEQUENCE ingest_conflicts_id_seq TO gongpei_api;
-- Sealing phones (infra/pii.py): a month's public key and its hash key (the keyed hash of a
-- number within that month), and a new data key per sealed phone, which it may add but never
-- read back. The months' private keys it cannot read: only the SMS service opens a phone.
GRANT SELECT (period, public_key, hash_key), INSERT ON pii_periods TO gongpei_api;
GRANT INSERT ON pii_keys TO gongpei_api;
-- The public lookup's limits (009): one bucket per address, address and waybill, or waybill;
-- pruned after a day (no brand, no phone).
GRANT SELECT, INSERT, UPDATE, DELETE ON public_lookup_limits TO gongpei_api;

-- -------------------------------------------------------------------------- gongpei_relay
-- The relay: reads the whole journal in order and publishes it to Kafka; keeps its cursor and
-- what the broker acknowledged. When the broker lost data it re-publishes from the start and
-- sends every consumer back to offset 0: that one UPDATE, on those two columns, is all it may
-- do to consumer_offsets (it can neither read nor delete them).
GRANT SELECT ON journal TO gongpei_relay;
GRANT SELECT, INSERT, UPDATE ON relay_cursor TO gongpei_relay;
GRANT SELECT, INSERT, UPDATE, DELETE ON relay_partition_marks TO gongpei_relay;
GRANT UPDATE (next_offset, updated_at) ON consumer_offsets TO gongpei_relay;

-- ------------------------------------------------------------------------- gongpei_worker
-- The stream worker: reads Kafka, not the journal; keeps the tracking and SLA read models and
-- the consumer offsets stored with them. Emptying the tracking model for a rebuild is the
-- owner's (`gongpei rebuild tracking`), so it may not delete parcels or their events.
GRANT SELECT, INSERT ON tracking_events TO gongpei_worker;
GRANT SELECT, INSERT, UPDATE ON parcels TO gongpei_worker;
GRANT SELECT, INSERT, UPDATE ON consumer_offsets TO gongpei_worker;          -- RLS: its own rows
GRANT SELECT, INSERT ON projection_set_aside TO gongpei_worker;     -- set aside what it cannot apply
GRANT SELECT, INSERT ON sla_events TO gongpei_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON sla_legs, sla_daily, sla_runs TO gongpei_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON sla_handins TO gongpei_worker;
-- Whether a registration's data key still exists: an erased number's masked form is not shown
-- again by a rebuild. The key material itself it cannot read.
GRANT SELECT (key_id) ON pii_keys TO gongpei_worker;

-- ------------------------------------------------------------------------- gongpei_ledger
-- The ledger: follows the whole journal in seq order (every brand: it books them all) and
-- keeps the settlement tables. PostgreSQL's triggers keep closed periods closed against it too.
GRANT SELECT ON journal TO gongpei_ledger;
GRANT SELECT, INSERT ON settlement_events TO gongpei_ledger;
GRANT SELECT, INSERT, UPDATE ON ledger_cursor, ledger_periods TO gongpei_ledger;
GRANT SELECT, INSERT, UPDATE ON consumer_offsets TO gongpei_ledger;          -- RLS: its own row
GRANT SELECT, INSERT ON projection_set_aside TO gongpei_ledger;
GRANT SELECT, INSERT, DELETE ON ledger_lines TO gongpei_ledger;
GRANT SELECT, INSERT, UPDATE ON ledger_parcels, ledger_trips TO gongpei_ledger;  -- its state (011)

-- ---------------------------------------------------------------------------- gongpei_sms
-- The SMS service: follows the journal and appends its own events to it (pickup codes,
-- sms.requested/submitted/failed); keeps the SMS state, the only place a phone is read to be
-- sent; `gongpei rebuild sms` runs as this role too.
GRANT SELECT, INSERT ON journal TO gongpei_sms;
GRANT USAGE ON SEQUENCE journal_seq_seq TO gongpei_sms;
GRANT SELECT, INSERT, UPDATE, DELETE ON sms_recipients, sms_points, sms_arrivals,
    sms_digests, sms_messages, sms_message_parcels TO gongpei_sms;
GRANT SELECT, INSERT, UPDATE ON consumer_offsets TO gongpei_sms;             -- RLS: its own row
GRANT SELECT, INSERT ON projection_set_aside TO gongpei_sms;
GRANT SELECT, INSERT, UPDATE ON sms_attempts TO gongpei_sms;
-- The only service that opens a phone: it unwraps a month's private key with the master key it
-- alone is given, then the phone's data key. Shredding and erasure are the owner's (`gongpei pii`).
GRANT SELECT ON pii_periods, pii_keys TO gongpei_sms;
