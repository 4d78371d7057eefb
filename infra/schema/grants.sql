-- The application role: no superuser, no BYPASSRLS, only what the services need.
GRANT SELECT, INSERT ON journal TO gongpei_app;
GRANT USAGE ON SEQUENCE journal_seq_seq TO gongpei_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON relay_cursor, relay_partition_marks, consumer_offsets TO gongpei_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tracking_events, parcels, consumer_offsets TO gongpei_app;
GRANT SELECT ON tokens TO gongpei_app;
GRANT SELECT, INSERT ON settlement_events TO gongpei_app;
GRANT SELECT, INSERT, UPDATE ON ledger_cursor, ledger_periods TO gongpei_app;
GRANT SELECT, INSERT, DELETE ON ledger_lines TO gongpei_app;
GRANT SELECT, INSERT ON sla_events TO gongpei_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON sla_legs, sla_daily, sla_runs TO gongpei_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON public_lookup_failures TO gongpei_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON sms_cursor, sms_recipients, sms_points, sms_arrivals,
    sms_digests, sms_messages, sms_message_parcels, sms_skipped TO gongpei_app;
GRANT SELECT, INSERT, UPDATE ON sms_attempts TO gongpei_app;
-- Personal data keys (007). Today every service is gongpei_app; what each needs: the API INSERTs
-- pii_keys and SELECTs/INSERTs pii_periods (period, public_key, hash_key); the tracking worker
-- SELECTs pii_keys (key_id) only; the SMS service SELECTs both (it unwraps keys). No service
-- UPDATEs or DELETEs them: shredding and erasure run as the schema owner (`gongpei pii`).
GRANT SELECT, INSERT ON pii_periods, pii_keys TO gongpei_app;
