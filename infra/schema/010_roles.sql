-- One role per service (created by `gongpei migrate`; privileges in grants.sql). Two tables the
-- API reads had no row-level security yet; every table it reads now has, or is a named
-- exception (docs/security/roles.md).

-- Recipients: the API reads consent by waybill (the parcels without consent), so a brand's
-- token sees its own parcels' rows only. The SMS service works with scope '*'.
ALTER TABLE sms_recipients ENABLE ROW LEVEL SECURITY;
ALTER TABLE sms_recipients FORCE ROW LEVEL SECURITY;
CREATE POLICY sms_recipients_by_brand ON sms_recipients
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));

-- Tokens: a session sees the row of the token it presents, by its SHA-256 (hex) in
-- gongpei.token_hash, and no other: whoever holds the API's database credentials still cannot
-- list who holds which token. Not FORCEd: the schema owner administers tokens (`gongpei token`).
ALTER TABLE tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY tokens_presented ON tokens
    USING (token_hash = decode(nullif(current_setting('gongpei.token_hash', true), ''), 'hex'));

-- When tokens were last used, written in batches by the API (api/access_log.py). Row-level
-- security shows the API's role only the token presented, and a batch is many tokens: this
-- function, owned by the schema owner, changes that one column and nothing else.
CREATE FUNCTION touch_tokens(ids bigint[], ats timestamptz[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.tokens t SET last_used_at = u.at
    FROM unnest(ids, ats) AS u(id, at)
    WHERE t.id = u.id AND (t.last_used_at IS NULL OR t.last_used_at < u.at);
$$;
REVOKE ALL ON FUNCTION touch_tokens(bigint[], timestamptz[]) FROM PUBLIC;
