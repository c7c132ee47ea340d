-- The dashboard's own view of each organisation, projected from the topics. Each part keeps
-- the newest revision its producer announced; an older one changes nothing.

CREATE TABLE views (
    organisation_id       text        PRIMARY KEY,
    credits               jsonb,
    credits_revision      bigint,
    subscription          jsonb,
    subscription_revision bigint,
    seats                 jsonb,
    seats_revision        bigint,
    updated_at            timestamptz NOT NULL
);

-- Usage events (one per agent message), for recent debits and the usage chart.
CREATE TABLE usage (
    event_id        uuid        PRIMARY KEY,
    organisation_id text        NOT NULL,
    member_id       text        NOT NULL,
    agent_id        text        NOT NULL,
    credits         bigint      NOT NULL CHECK (credits > 0),
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX usage_by_organisation ON usage (organisation_id, occurred_at DESC);

-- Denied sends (authorizations refused for lack of credits).
CREATE TABLE denials (
    event_id        uuid        PRIMARY KEY,
    organisation_id text        NOT NULL,
    member_id       text        NOT NULL,
    agent_id        text,
    reason          text,
    estimate        bigint      NOT NULL,
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX denials_by_organisation ON denials (organisation_id, occurred_at DESC);
