-- Personal data (infra/pii.py, docs/security/personal-data.md): phone numbers are sealed in the
-- events themselves; these tables hold the keys that open them. Destroying keys (crypto-shredding)
-- makes a number unreadable everywhere, journal and Kafka included, without rewriting anything.

-- One X25519 keypair per county month: the private key sealed to the master public key (which
-- master key: master_key_id); hash_key keys the household hash of the month's numbers.
-- Shredding a period sets private_key and hash_key to NULL and deletes its data keys.
CREATE TABLE pii_periods (
    period        text PRIMARY KEY CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    public_key    bytea NOT NULL,
    private_key   bytea,
    master_key_id text NOT NULL,
    hash_key      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    shredded_at   timestamptz,
    CHECK ((shredded_at IS NULL) = (private_key IS NOT NULL AND hash_key IS NOT NULL))
);

-- One AES-256 data key per sealed phone, sealed to its period's public key. household is the
-- keyed hash (HMAC-SHA256 with the period's hash_key) of the number: an erasure request finds
-- the number's keys by it. Deleting a row makes that one ciphertext unreadable.
CREATE TABLE pii_keys (
    key_id     text PRIMARY KEY,
    period     text NOT NULL REFERENCES pii_periods,
    household  text NOT NULL,
    sealed_key bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pii_keys_period_household ON pii_keys (period, household);

-- Tracking keeps the masked form and the last four (as before) and the data key's id, so an
-- erasure can find and clear them.
ALTER TABLE parcels ADD COLUMN phone_key_id text;
CREATE INDEX parcels_phone_key_id ON parcels (phone_key_id) WHERE phone_key_id IS NOT NULL;

-- The SMS service keeps the sealed phone object (and the waybill it is bound to), never the
-- number, and its own grouping reference phone_ref: HMAC-SHA256 of the number under a key derived
-- from the master private key (so the same across months; only the SMS service can compute it).
ALTER TABLE sms_recipients DROP COLUMN phone;
ALTER TABLE sms_recipients ADD COLUMN sealed_phone jsonb, ADD COLUMN phone_ref text;
CREATE INDEX sms_recipients_key_id ON sms_recipients ((sealed_phone->>'key_id'));

DROP INDEX sms_digests_phone_node;
ALTER TABLE sms_digests DROP COLUMN phone;
ALTER TABLE sms_digests ADD COLUMN phone_ref text NOT NULL DEFAULT '';
ALTER TABLE sms_digests ALTER COLUMN phone_ref DROP DEFAULT;
CREATE INDEX sms_digests_ref_node ON sms_digests (phone_ref, node_id);

DROP INDEX sms_messages_phone;
ALTER TABLE sms_messages DROP COLUMN phone;
ALTER TABLE sms_messages ADD COLUMN sealed_phone jsonb, ADD COLUMN phone_ref text NOT NULL DEFAULT '';
ALTER TABLE sms_messages ALTER COLUMN phone_ref DROP DEFAULT;
CREATE INDEX sms_messages_ref ON sms_messages (phone_ref, submitted_at);
CREATE INDEX sms_messages_key_id ON sms_messages ((sealed_phone->>'key_id'));
