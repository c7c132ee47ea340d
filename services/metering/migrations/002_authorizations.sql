-- Credit authorization for the chat gateway: holds reserve an estimate until the usage event
-- settles them. `wallets.held` is the sum of the organisation's active holds, kept in the same
-- transaction as every hold that is taken, settled, released or expired.
ALTER TABLE wallets ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0);

-- Every decision, allowed or denied, once per (organisation, message): asking again for the
-- same message returns the recorded decision.
CREATE TABLE authorizations (
    authorization_id uuid        PRIMARY KEY,
    organisation_id  text        NOT NULL,
    message_id       text        NOT NULL,
    member_id        text        NOT NULL,
    agent_id         text,
    decision         text        NOT NULL CHECK (decision IN ('allowed', 'denied')),
    reason           text,
    estimate         bigint      NOT NULL CHECK (estimate > 0),
    status           text        NOT NULL
                     CHECK (status IN ('held', 'settled', 'released', 'expired', 'denied')),
    decided_at       timestamptz NOT NULL,
    expires_at       timestamptz,
    closed_at        timestamptz,
    settled_credits  bigint,
    UNIQUE (organisation_id, message_id),
    CHECK ((decision = 'denied') = (status = 'denied')),
    CHECK ((decision = 'denied') = (reason IS NOT NULL)),
    CHECK ((decision = 'allowed') = (expires_at IS NOT NULL))
);
CREATE INDEX authorizations_held_by_organisation
    ON authorizations (organisation_id, expires_at) WHERE status = 'held';
CREATE INDEX authorizations_held_by_expiry
    ON authorizations (expires_at) WHERE status = 'held';
