-- Settlement ledger: double-entry lines in integer fen, periods that PostgreSQL keeps closed.

ALTER TABLE tokens DROP CONSTRAINT tokens_role_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_role_check CHECK (role IN
    ('scanner', 'brand-system', 'brand', 'manager', 'finance', 'finance-admin', 'admin'));

-- The ledger's inbox: the journal's settlement-relevant events, in journal order.
CREATE TABLE settlement_events (
    seq      bigint PRIMARY KEY,
    event_id text   NOT NULL UNIQUE,
    type     text   NOT NULL,
    brand    text   NOT NULL,
    waybill  text,
    trip_id  text,
    body     jsonb  NOT NULL
);
CREATE INDEX settlement_events_waybill ON settlement_events (waybill);
CREATE INDEX settlement_events_trip ON settlement_events (trip_id);

CREATE TABLE ledger_cursor (name text PRIMARY KEY, seq bigint NOT NULL DEFAULT 0);

CREATE TABLE ledger_periods (
    period     text PRIMARY KEY,
    starts     date NOT NULL,
    ends       date NOT NULL,
    closed_seq bigint,            -- journal seq of the period.closed event; NULL while open
    closed_at  timestamptz,
    closed_by  text
);

CREATE TABLE ledger_lines (
    entry_id      text    NOT NULL,   -- the lines of one entry sum to zero
    line_no       integer NOT NULL,
    period        text    NOT NULL REFERENCES ledger_periods (period),
    posting_date  date    NOT NULL,
    unit          text    NOT NULL,   -- parcel:WAYBILL, trip:TRIP, tier:BRAND
    kind          text    NOT NULL,
    account       text    NOT NULL,
    brand         text,
    ref           text,
    amount_fen    bigint  NOT NULL,
    event_ids     text[]  NOT NULL,   -- the events that caused this line
    adjusts_period text,              -- set on adjustments for a closed period
    late_event_id text,
    PRIMARY KEY (entry_id, line_no)
);
CREATE INDEX ledger_lines_period_brand ON ledger_lines (period, brand);
CREATE INDEX ledger_lines_unit ON ledger_lines (unit);

-- A closed period's lines can be neither added, changed nor removed: enforced here, not in code.
CREATE FUNCTION ledger_lines_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND EXISTS (
            SELECT 1 FROM ledger_periods WHERE period = OLD.period AND closed_seq IS NOT NULL) THEN
        RAISE EXCEPTION 'period % is closed; its postings cannot change', OLD.period
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND EXISTS (
            SELECT 1 FROM ledger_periods WHERE period = NEW.period AND closed_seq IS NOT NULL) THEN
        RAISE EXCEPTION 'period % is closed; post an adjustment in an open period', NEW.period
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN COALESCE(NEW, OLD);
END $$;
CREATE TRIGGER ledger_lines_guard BEFORE INSERT OR UPDATE OR DELETE ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION ledger_lines_guard();

CREATE FUNCTION ledger_truncate_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ledger_periods WHERE closed_seq IS NOT NULL) THEN
        RAISE EXCEPTION 'the ledger has closed periods; it cannot be truncated'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_lines_no_truncate BEFORE TRUNCATE ON ledger_lines
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_truncate_guard();
CREATE TRIGGER ledger_periods_no_truncate BEFORE TRUNCATE ON ledger_periods
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_truncate_guard();

-- A closed period stays closed, exactly as it was closed.
CREATE FUNCTION ledger_periods_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.closed_seq IS NOT NULL THEN
        RAISE EXCEPTION 'period % is closed and cannot be changed or removed', OLD.period
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN COALESCE(NEW, OLD);
END $$;
CREATE TRIGGER ledger_periods_guard BEFORE UPDATE OR DELETE ON ledger_periods
    FOR EACH ROW EXECUTE FUNCTION ledger_periods_guard();

ALTER TABLE ledger_lines ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_lines FORCE ROW LEVEL SECURITY;
CREATE POLICY ledger_lines_by_brand ON ledger_lines
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
ALTER TABLE settlement_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE settlement_events FORCE ROW LEVEL SECURITY;
CREATE POLICY settlement_events_by_brand ON settlement_events
    USING (current_setting('gongpei.brand_scope', true) = '*'
           OR brand = ANY (string_to_array(current_setting('gongpei.brand_scope', true), ',')));
