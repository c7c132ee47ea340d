-- Stripe is the truth: the gateway keeps what it fetches from Stripe, versioned per object by
-- itself (never by Stripe's whole-second timestamps); commands are claimed before Stripe is
-- called; seat quantities are sent within Stripe's hourly budget; reconciliations are counted.

-- Subscriptions: the state of the last applied observation and its version (1, 2, …). The
-- event time and id that used to order reports stay for the rows written before.
ALTER TABLE subscriptions
    ALTER COLUMN version_created DROP NOT NULL,
    ALTER COLUMN version_event_id DROP NOT NULL,
    ADD COLUMN version bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    ADD COLUMN observed_at timestamptz,
    ADD CONSTRAINT subscriptions_quantity_bounded CHECK (quantity <= 1000000);

-- Invoices as last observed. A paid invoice is final.
CREATE TABLE invoices (
    invoice_id           text        PRIMARY KEY,
    organisation_id      text        NOT NULL,
    customer_id          text        NOT NULL,
    subscription_id      text,
    status               text        NOT NULL
                         CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void')),
    amount_due           bigint      NOT NULL CHECK (amount_due BETWEEN 0 AND 1000000000000),
    amount_paid          bigint      NOT NULL CHECK (amount_paid BETWEEN 0 AND 1000000000000),
    currency             text        NOT NULL,
    billing_reason       text,
    period_start         timestamptz,
    period_end           timestamptz,
    attempt_count        int         NOT NULL CHECK (attempt_count >= 0),
    next_payment_attempt timestamptz,
    version              bigint      NOT NULL CHECK (version >= 1),
    observed_at          timestamptz NOT NULL
);
CREATE INDEX invoices_by_subscription ON invoices (subscription_id);

-- Checkout sessions the gateway created or was told of: `open` until Stripe holds them
-- complete (announced once) or expired. The reconciler asks Stripe about the open ones, so a
-- checkout paid while no webhook could arrive is still found.
CREATE TABLE checkout_sessions (
    session_id      text        PRIMARY KEY,
    organisation_id text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('open', 'complete', 'expired')),
    subscription_id text,
    created_at      timestamptz NOT NULL,
    checked_at      timestamptz,
    completed_at    timestamptz,
    CHECK ((status = 'complete') = (completed_at IS NOT NULL))
);
CREATE INDEX checkout_sessions_open ON checkout_sessions (created_at) WHERE status = 'open';

-- Commands are claimed (`running`, until `claimed_until`) before Stripe is called: concurrent
-- identical requests make one call; a claim whose holder died is taken over after it lapses.
-- `fingerprint` is the request's body: the same id with another body is refused.
ALTER TABLE commands DROP CONSTRAINT commands_status_check;
ALTER TABLE commands
    ADD CONSTRAINT commands_status_check CHECK (status IN ('running', 'succeeded', 'failed')),
    ADD COLUMN fingerprint text,
    ADD COLUMN claimed_until timestamptz,
    ADD COLUMN attempts int NOT NULL DEFAULT 1 CHECK (attempts >= 1);

-- Seat quantities: the newest count asked for (by the seat service's revision), the last one
-- sent, and the times of the sends in the last hour (Stripe's budget per subscription).
CREATE TABLE quantities (
    organisation_id text          PRIMARY KEY,
    wanted          int           NOT NULL CHECK (wanted BETWEEN 1 AND 1000000),
    wanted_revision bigint        NOT NULL CHECK (wanted_revision >= 0),
    sent            int           CHECK (sent BETWEEN 1 AND 1000000),
    sends           bigint        NOT NULL DEFAULT 0 CHECK (sends >= 0),
    sent_times      timestamptz[] NOT NULL DEFAULT '{}',
    due_at          timestamptz,
    last_error      text,
    updated_at      timestamptz   NOT NULL
);
CREATE INDEX quantities_due ON quantities (due_at) WHERE due_at IS NOT NULL;

-- Webhook events are claimed by a processor for a while instead of being locked in a
-- transaction: no transaction is open while Stripe is asked for the objects they name.
ALTER TABLE inbox ADD COLUMN claimed_until timestamptz;

-- Each reconciliation: what it compared, repaired and raised.
CREATE TABLE reconciliations (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id text,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    subscriptions   int         NOT NULL DEFAULT 0,
    checkouts       int         NOT NULL DEFAULT 0,
    quantities      int         NOT NULL DEFAULT 0,
    repaired        int         NOT NULL DEFAULT 0,
    alerts          int         NOT NULL DEFAULT 0,
    error           text,
    lease_until     timestamptz NOT NULL
);
-- One sweep of a scope at a time across instances; a sweep whose instance died lapses.
CREATE UNIQUE INDEX reconciliations_one_running
    ON reconciliations ((coalesce(organisation_id, '*'))) WHERE finished_at IS NULL;
