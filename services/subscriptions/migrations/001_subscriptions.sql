-- The subscription service's own state. Organisations and members are projected from the
-- member directory's topic; subscriptions are the state machine this service owns.

CREATE TABLE organisations (
    organisation_id text        PRIMARY KEY,
    name            text,
    created_at      timestamptz NOT NULL,
    known_at        timestamptz NOT NULL
);

-- Each member's newest state by the directory's per-member sequence.
CREATE TABLE members (
    organisation_id text        NOT NULL,
    member_id       text        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    status          text        NOT NULL CHECK (status IN ('active', 'deactivated', 'removed')),
    sequence        bigint      NOT NULL CHECK (sequence >= 0),
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (organisation_id, member_id)
);

CREATE TABLE subscriptions (
    organisation_id        text        PRIMARY KEY,
    created_at             timestamptz NOT NULL,
    plan                   text        NOT NULL CHECK (plan IN ('free', 'pro', 'max', 'enterprise')),
    cycle                  text        CHECK (cycle IN ('monthly', 'annual')),
    standing               text        NOT NULL CHECK (standing IN ('active', 'past_due')),
    anchor                 timestamptz NOT NULL,
    credit_period_start    timestamptz NOT NULL,
    credit_period_end      timestamptz NOT NULL,
    paid_period_end        timestamptz,
    cancel_at_period_end   boolean     NOT NULL,
    pending_plan           text        CHECK (pending_plan IN ('free', 'pro', 'max')),
    pending_cycle          text        CHECK (pending_cycle IN ('monthly', 'annual')),
    stripe_subscription_id text,
    stripe_version         timestamptz,
    enterprise_credits     bigint      CHECK (enterprise_credits >= 0),
    enterprise_seat_limit  int         CHECK (enterprise_seat_limit >= 1),
    enterprise_features    text[],
    next_renewal_at        timestamptz NOT NULL,
    revision               bigint      NOT NULL CHECK (revision >= 1),
    updated_at             timestamptz NOT NULL,
    CHECK (credit_period_end > credit_period_start),
    CHECK ((plan = 'enterprise') = (enterprise_credits IS NOT NULL))
);
CREATE INDEX subscriptions_due ON subscriptions (next_renewal_at);

-- Checkouts asked for (R4): completed when the gateway reports them.
CREATE TABLE checkouts (
    request_id      text        PRIMARY KEY,
    organisation_id text        NOT NULL,
    plan            text        NOT NULL,
    cycle           text        NOT NULL,
    url             text,
    session_id      text,
    requested_by    text        NOT NULL,
    requested_at    timestamptz NOT NULL,
    completed_at    timestamptz
);

-- What was applied from the gateway's events, once (checkout sessions).
CREATE TABLE applied (
    key        text        PRIMARY KEY,
    applied_at timestamptz NOT NULL
);
