-- The ledger's per-unit state (issue 10): what the settlement rules need of each parcel and each
-- trip, folded event by event, so a new scan costs O(1) instead of a reload of its trip.
-- settlement_events stays, for the API (trip drill-down, what-if): it now holds the events that
-- carry a trip_id and the registrations of parcels loaded on a trip, not every settlement event.

CREATE TABLE ledger_parcels (
    waybill text  PRIMARY KEY,
    state   jsonb NOT NULL      -- domain/settlement/state.py ParcelState.to_json
);

CREATE TABLE ledger_trips (
    trip_id text  PRIMARY KEY,
    state   jsonb NOT NULL      -- domain/settlement/state.py TripState.to_json
);

-- How far the state tables have folded the journal. A ledger kept before they existed has
-- seq > 0 and state_seq = 0: the ledger service folds the journal up to seq (posting nothing)
-- before it applies anything new.
ALTER TABLE ledger_cursor ADD COLUMN state_seq bigint NOT NULL DEFAULT 0;
