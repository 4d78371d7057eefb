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
GRANT UPDATE (last_used_at) ON tokens TO gongpei_app;
GRANT SELECT, INSERT ON access_log TO gongpei_app;
GRANT EXECUTE ON FUNCTION prune_access_log(integer) TO gongpei_app;
