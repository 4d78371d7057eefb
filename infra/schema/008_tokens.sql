-- Tokens expire and remember when they were last used; an access log says who called what.

-- NULL: never expires (`gongpei token create --expires-in never`). Tokens issued before this
-- migration keep no expiry: say so in `gongpei token list`, and re-issue them.
ALTER TABLE tokens ADD COLUMN expires_at timestamptz;
-- Written by the API at most once a minute per token and process, in the background.
ALTER TABLE tokens ADD COLUMN last_used_at timestamptz;

-- One row per HTTP request, written by the API in batches (COPY, about once a second). The route
-- is the template ('/v1/parcels/{waybill}'), never the concrete path: a waybill or anything else
-- in a path may be personal. No query string, no body, no secret.
CREATE TABLE access_log (
    at           timestamptz NOT NULL,
    token_id     bigint,              -- NULL: no token, or an unknown or expired one
    token_name   text,
    role         text,
    method       text NOT NULL,
    route        text NOT NULL,
    status       smallint NOT NULL,
    duration_ms  real NOT NULL,
    client       text NOT NULL,       -- the peer, or X-Forwarded-For through a trusted proxy
    -- Refusals (429) of one token or address on one route are counted in one row per write
    -- (about a second): a flood of refused requests cannot flood this table.
    requests     integer NOT NULL DEFAULT 1 CHECK (requests >= 1)
);
CREATE INDEX access_log_at ON access_log USING brin (at);
CREATE INDEX access_log_token ON access_log (token_id, at) WHERE token_id IS NOT NULL;

-- Retention. The application role may add to the log and read it but never change or delete
-- rows: an intruder in the API cannot erase the trail. It prunes through this function, which
-- deletes only rows older than the retention it is given, and never less than 7 days.
CREATE FUNCTION prune_access_log(keep_days integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
BEGIN
    IF keep_days IS NULL OR keep_days < 7 THEN
        RAISE EXCEPTION 'access-log retention must be at least 7 days, not %', keep_days;
    END IF;
    DELETE FROM public.access_log WHERE at < now() - make_interval(days => keep_days);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION prune_access_log(integer) FROM PUBLIC;
