"""Prometheus metric families, defined once for the API, the relay and the workers.

With PROMETHEUS_MULTIPROC_DIR set (as `gongpei up` does) every process writes its samples there and
the API's /metrics serves them all together."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INGEST_EVENTS = Counter(
    "gongpei_ingest_events", "Events received by the ingest API, by result and reason",
    ["result", "reason"],
)
INGEST_CONFLICTS = Counter(
    "gongpei_ingest_conflicts",
    "Uploads the county manager should look at: another brand's waybill, or a reused event_id",
    ["kind"],
)
INGEST_BATCHES = Counter(
    "gongpei_ingest_batches", "Scan batches by HTTP outcome", ["outcome"],
)
RELAY_LAG = Gauge(
    "gongpei_relay_lag_events", "Journal events not yet acknowledged by Kafka",
    multiprocess_mode="livemax",
)
RELAY_PUBLISHED = Counter("gongpei_relay_published_events", "Journal events published to Kafka")
RELAY_REPUBLISHES = Counter(
    "gongpei_relay_broker_data_loss", "Times the broker was found to have lost data we had published",
)
WORKER_REBALANCES = Counter(
    "gongpei_worker_rebalances",
    "Partition assignments the stream worker received: one per (re)join of its group; a rising"
    " rate is a rebalance storm",
)
CONSUMER_LAG = Gauge(
    "gongpei_consumer_lag_messages", "Messages behind the partition end, per consumer and partition",
    ["consumer", "topic", "partition"], multiprocess_mode="livemax",
)
PROJECTION_APPLY_SECONDS = Histogram(
    "gongpei_projection_apply_seconds", "Time to apply one fetched batch to a read model",
    ["projection"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PROJECTION_EVENTS = Counter(
    "gongpei_projection_events", "Events applied to a read model, new or duplicate",
    ["projection", "result"],
)
PROJECTION_LAG = Gauge(
    "gongpei_projection_lag_events",
    "Events behind the journal's end (journal followers) or the partitions' ends (Kafka-fed)",
    # Summed over live processes: several stream workers each report the partitions they hold
    # (a journal follower has one active process; its standbys report nothing).
    ["projection"], multiprocess_mode="livesum",
)
PROJECTION_SET_ASIDE = Counter(
    "gongpei_projection_set_aside",
    "Events a projection could not decode or apply (reason: undecodable or reducer_raised), set"
    " aside (never retried in a loop, never skipped silently): `gongpei projections` lists them",
    ["projection", "reason"],
)
DEAD_LETTERS = Counter("gongpei_dead_letters", "Messages sent to the dead-letter topic", ["reason"])
SLA_ON_TIME = Gauge(
    "gongpei_sla_on_time_ratio", "Today's share of finished legs on time (county-local day)",
    ["leg"], multiprocess_mode="livemax",
)
SLA_AT_RISK = Gauge(
    "gongpei_sla_at_risk_legs", "Open legs past their at-risk point and not yet due", ["leg"],
    multiprocess_mode="livemax",
)
SMS_OUTCOMES = Counter("gongpei_sms", "SMS by outcome: requested, submitted, delivered, failed",
                       ["outcome"])
SMS_ARRIVAL_TO_SUBMITTED = Histogram(
    "gongpei_sms_arrival_to_submitted_seconds",
    "From the platform learning of a parcel at the village point to its SMS reaching the provider",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400),
)
SMS_FAILURES = Counter("gongpei_sms_failures", "Failed SMS calls and receipts, by provider and code",
                       ["provider", "code", "permanent"])
SMS_OVERDUE = Gauge(
    "gongpei_sms_overdue_messages",
    "SMS due for over five minutes that no provider has accepted yet (villagers not yet told)",
    multiprocess_mode="livemax",
)
PROCESS_RESTARTS = Counter(
    "gongpei_process_restarts",
    "Times the embedded supervisor restarted a process that died (postgres, broker, a service or"
    " gateway); written by the supervisor itself, at 0 from the start for every process",
    ["process"],
)


PROJECTIONS = ("tracking", "sla", "ledger", "sms")


# Disk and memory, sampled by the embedded supervisor every 10 s (entrypoints/capacity.py) and
# written into the folder /metrics serves; absent outside it (watch the hosts there instead).
DISK_FREE = Gauge(
    "gongpei_disk_free_bytes", "Bytes still free for PostgreSQL on the disk of its data folder",
    ["disk"], multiprocess_mode="mostrecent",
)
DISK_SIZE = Gauge(
    "gongpei_disk_size_bytes", "Size of the disk of PostgreSQL's data folder (used + free)",
    ["disk"], multiprocess_mode="mostrecent",
)
PROCESS_MEMORY = Gauge(
    "gongpei_process_resident_bytes",
    "Resident memory of a supervised process (the in-memory broker keeps every event)",
    ["process"], multiprocess_mode="mostrecent",
)
MACHINE_MEMORY = Gauge(
    "gongpei_machine_memory_bytes", "The machine's memory: total, and available (MemAvailable)",
    ["kind"], multiprocess_mode="mostrecent",
)


def _from_the_start() -> None:
    """Every labelled counter an alert reads exists at 0 from the first scrape: a series that
    first appears at 5 hides its first burst from `increase()`."""
    for projection in PROJECTIONS:
        for result in ("new", "duplicate", "set_aside"):
            PROJECTION_EVENTS.labels(projection=projection, result=result)
        for reason in ("undecodable", "reducer_raised"):
            PROJECTION_SET_ASIDE.labels(projection=projection, reason=reason)
    for outcome in ("requested", "submitted", "delivered", "failed", "cancelled"):
        SMS_OUTCOMES.labels(outcome=outcome)
    INGEST_BATCHES.labels(outcome="ok")


_from_the_start()
