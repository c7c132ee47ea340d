-- Wallets: one per organisation, the balance derived in the same transaction as every entry.
CREATE TABLE wallets (
    organisation_id text        PRIMARY KEY,
    balance         bigint      NOT NULL DEFAULT 0,
    allotment       bigint      NOT NULL DEFAULT 0 CHECK (allotment >= 0),
    used            bigint      NOT NULL DEFAULT 0 CHECK (used >= 0),
    revision        bigint      NOT NULL DEFAULT 0,
    period_key      text,
    period_start    timestamptz,
    renews_at       timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- The credit ledger: append-only. `entry_id` is the idempotency key of the effect: the usage
-- event id for a debit, a name-based UUID of (organisation, period key, kind) for grants.
CREATE TABLE ledger (
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    entry_id        uuid        PRIMARY KEY,
    organisation_id text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('grant', 'debit', 'expiry', 'adjustment')),
    amount          bigint      NOT NULL CHECK (amount <> 0),
    source_event_id uuid        NOT NULL,
    reason          text,
    period_key      text,
    member_id       text,
    agent_id        text,
    conversation_id text,
    message_id      text,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CHECK (kind <> 'debit' OR amount < 0)
);
CREATE INDEX ledger_by_organisation ON ledger (organisation_id, seq);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the credit ledger is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- Every grant command applied, once per (organisation, period key).
CREATE TABLE grants (
    organisation_id text        NOT NULL,
    period_key      text        NOT NULL,
    event_id        uuid        NOT NULL,
    reason          text        NOT NULL,
    amount          bigint      NOT NULL,
    period_start    timestamptz,
    period_end      timestamptz,
    plan            text,
    note            text,
    applied_at      timestamptz NOT NULL,
    PRIMARY KEY (organisation_id, period_key)
);
