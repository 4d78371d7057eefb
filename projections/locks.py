"""Every PostgreSQL advisory lock id the platform takes, in one place, so no two uses collide.

(Two once did: a ledger replay took "the ledger's lock + 1", which was the SMS planner's, found it
held and replayed nothing.) Ids are stable: a running old process and a new one must agree."""

from __future__ import annotations

from enum import IntEnum


class Lock(IntEnum):
    MIGRATE = 7710001          # one migrator at a time (infra/db.py spells the same number)
    JOURNAL_APPEND = 7710002   # appends are serialised: journal seq order = commit order
    RELAY = 7710003            # one relay publishes the journal
    LEDGER = 7710004           # the ledger projection's journal follower
    SMS_PLANNER = 7710005      # the SMS planner's journal follower
    SMS_SENDER = 7710006       # one SMS sender at a time
    LEDGER_REBUILD = 7710007   # a ledger replay into a scratch schema
    REBUILD = 7710008          # a projection replay into a scratch schema (any projection)
    # A Kafka-fed projection's batches take its lock shared; swapping a rebuilt model in takes it
    # exclusive, so no batch lands in the old model while the new one replaces it.
    TRACKING_SWAP = 7710010
    SLA_SWAP = 7710011
    SLA_BATCH = 7710012        # one SLA batch at a time: legs and daily counts move by differences


def journal_follower(name: str) -> Lock:
    """The lock a journal-following projection's live catch-up holds."""
    return {"ledger": Lock.LEDGER, "sms": Lock.SMS_PLANNER}[name]


def swap(name: str) -> Lock:
    """The lock a Kafka-fed projection's batches share and its swap takes alone."""
    return {"tracking": Lock.TRACKING_SWAP, "sla": Lock.SLA_SWAP}[name]
