-- Credits as buckets: every grant is a bucket with a source, a priority and an expiry; debits
-- burn them down in a defined order (`domain/buckets.py`). balance = Σ remaining − debt.
ALTER TABLE wallets ADD COLUMN debt bigint NOT NULL DEFAULT 0 CHECK (debt >= 0);

CREATE TABLE buckets (
    bucket_id       uuid        PRIMARY KEY,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    organisation_id text        NOT NULL,
    grant_key       text        NOT NULL,
    source          text        NOT NULL CHECK (source IN ('plan', 'upgrade_top_up', 'rollover',
                                    'pack', 'auto_recharge', 'promotion', 'operator')),
    granted         bigint      NOT NULL CHECK (granted > 0),
    remaining       bigint      NOT NULL CHECK (remaining >= 0 AND remaining <= granted),
    live            boolean     GENERATED ALWAYS AS (remaining > 0) STORED,
    priority        integer     NOT NULL CHECK (priority BETWEEN 0 AND 100),
    ends_with_period boolean    NOT NULL,
    effective_from  timestamptz NOT NULL,
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (organisation_id, grant_key, source),
    CHECK (ends_with_period = (source IN ('plan', 'upgrade_top_up', 'rollover')))
);
-- The indexes name `live`, never `remaining`: a debit that leaves a bucket live changes no
-- indexed value, so its update stays on the page (HOT) and touches no index.
ALTER TABLE buckets SET (fillfactor = 80);
CREATE INDEX buckets_open ON buckets (organisation_id) WHERE live;
CREATE INDEX buckets_due ON buckets (expires_at)
    WHERE live AND NOT ends_with_period AND expires_at IS NOT NULL;

-- What each ledger entry took from (negative) each bucket; a bucket's remaining is what it was
-- granted plus the sum of its allocations. Append-only, as the ledger.
CREATE TABLE ledger_buckets (
    entry_id  uuid   NOT NULL,
    bucket_id uuid   NOT NULL,
    amount    bigint NOT NULL CHECK (amount < 0),
    PRIMARY KEY (entry_id, bucket_id)
);

CREATE TRIGGER ledger_buckets_append_only BEFORE UPDATE OR DELETE ON ledger_buckets
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_buckets_no_truncate BEFORE TRUNCATE ON ledger_buckets
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- The terms of version 2 grant commands, compared on redelivery.
ALTER TABLE grants
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN priority     integer,
    ADD COLUMN rollover_cap bigint,
    ADD COLUMN clawback_of  text;

-- Wallets from before buckets: what they hold becomes one plan bucket, ending with the period;
-- a negative balance becomes the debt.
INSERT INTO buckets (bucket_id, organisation_id, grant_key, source, granted, remaining, priority,
                     ends_with_period, effective_from, expires_at, created_at, updated_at)
SELECT md5(organisation_id || ':migrated')::uuid, organisation_id,
       coalesce(period_key, 'migrated'), 'plan', balance, balance, 10, true,
       coalesce(period_start, created_at), renews_at, updated_at, updated_at
FROM wallets WHERE balance > 0;
UPDATE wallets SET debt = -balance WHERE balance < 0;
