-- The seat service's own state, projected from the member directory's topic and the
-- subscription service's events.

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

-- Per organisation: the seat count and owners (kept with every member change, in the same
-- transaction), and the newest subscription state seen (plan, limit, Stripe subscription).
CREATE TABLE organisations (
    organisation_id        text        PRIMARY KEY,
    created_at             timestamptz,
    seats                  int         NOT NULL CHECK (seats >= 0),
    owners                 text[]      NOT NULL,
    plan                   text        CHECK (plan IN ('free', 'pro', 'max', 'enterprise')),
    seat_limit             int         CHECK (seat_limit >= 1),
    stripe_subscription_id text,
    subscription_revision  bigint      CHECK (subscription_revision >= 0),
    revision               bigint      NOT NULL CHECK (revision >= 0),
    updated_at             timestamptz NOT NULL,
    CHECK ((plan IS NULL) = (subscription_revision IS NULL)),
    CHECK (plan IS NOT NULL OR seat_limit IS NULL)
);

-- The seat quantity Stripe should have, coalesced: `revision` is the organisation's revision
-- of that count; a row is pending until a command with its revision was enqueued.
CREATE TABLE quantity_syncs (
    organisation_id text        PRIMARY KEY,
    quantity        int         NOT NULL CHECK (quantity >= 1),
    revision        bigint      NOT NULL CHECK (revision >= 0),
    due_at          timestamptz NOT NULL,
    pending         boolean     NOT NULL,
    sent_quantity   int,
    sent_revision   bigint,
    sent_at         timestamptz
);
CREATE INDEX quantity_syncs_due ON quantity_syncs (due_at) WHERE pending;
