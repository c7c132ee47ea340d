-- The audit log's entries for each organisation (`billing.audit`), once each by event id:
-- shown to its owners on a plan with the audit log.
CREATE TABLE audit (
    event_id        uuid        PRIMARY KEY,
    organisation_id text        NOT NULL,
    actor           text        NOT NULL,
    action          text        NOT NULL,
    target          text,
    outcome         text        NOT NULL,
    request_id      text        NOT NULL,
    detail          text        NOT NULL,
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX audit_by_organisation ON audit (organisation_id, occurred_at DESC);
