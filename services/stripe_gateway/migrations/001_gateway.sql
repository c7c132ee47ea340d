-- The Stripe gateway's own state. Stripe is the source of truth; these tables remember what
-- the gateway received and did, so that nothing is processed twice and nothing is lost.

-- Each organisation's Stripe customer, and the newest seat count sent to Stripe.
CREATE TABLE organisations (
    organisation_id   text        PRIMARY KEY,
    customer_id       text        UNIQUE,
    quantity_revision bigint      NOT NULL DEFAULT -1,
    updated_at        timestamptz NOT NULL
);

-- Every verified webhook event, once (Stripe's event id), before it is answered 2xx.
-- `pending` events are processed asynchronously; `done` once processing succeeded; `parked`
-- after `inbox_max_attempts` failures (replayable); `ignored` for types we do not handle.
CREATE TABLE inbox (
    event_id        text        PRIMARY KEY,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    type            text        NOT NULL,
    created         timestamptz NOT NULL,
    payload         bytea       NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'done', 'parked', 'ignored')),
    attempts        int         NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    received_at     timestamptz NOT NULL,
    processed_at    timestamptz
);
CREATE INDEX inbox_due ON inbox (next_attempt_at, created, seq) WHERE status = 'pending';

-- Webhook requests refused (bad or missing signature, stale timestamp, not an event): kept for
-- inspection, never processed.
CREATE TABLE webhook_rejections (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    signature     text,
    body_sha256   text        NOT NULL,
    body_bytes    int         NOT NULL,
    body_head     bytea       NOT NULL,
    received_at   timestamptz NOT NULL
);

-- Each subscription as Stripe last reported it, with that report's version (Stripe's event
-- time, then event id); an older report never overwrites a newer one; deleted is final.
CREATE TABLE subscriptions (
    subscription_id      text        PRIMARY KEY,
    organisation_id      text        NOT NULL,
    customer_id          text        NOT NULL,
    status               text        NOT NULL,
    price_id             text,
    item_id              text,
    quantity             int         NOT NULL CHECK (quantity >= 1),
    period_start         timestamptz,
    period_end           timestamptz,
    cancel_at_period_end boolean     NOT NULL,
    deleted              boolean     NOT NULL DEFAULT false,
    version_created      timestamptz NOT NULL,
    version_event_id     text        NOT NULL,
    updated_at           timestamptz NOT NULL
);
CREATE INDEX subscriptions_by_organisation ON subscriptions (organisation_id, version_created);

-- Every command executed, once (its id; HTTP requests: their request id), with its result.
CREATE TABLE commands (
    command_id      text        PRIMARY KEY,
    organisation_id text        NOT NULL,
    type            text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('succeeded', 'failed')),
    result          jsonb       NOT NULL,
    executed_at     timestamptz NOT NULL
);

-- Wake the inbox processors when events arrive or are replayed (delivered at commit, folded
-- into one notification per transaction). Only what makes work: marking events done must not
-- wake anyone.
CREATE FUNCTION inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END $$;
CREATE TRIGGER inbox_notify_received AFTER INSERT ON inbox
    FOR EACH STATEMENT EXECUTE FUNCTION inbox_notify();
CREATE TRIGGER inbox_notify_replayed AFTER UPDATE OF status ON inbox
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status <> 'pending')
    EXECUTE FUNCTION inbox_notify();
