-- The audit log as this service keeps it (`shared.audit`): one row per owner's or operator's
-- action, append-only; each row is announced on `billing.audit` through the outbox.
CREATE TABLE audit_log (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    organisation_id text        NOT NULL,
    actor           text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 128),
    actor_kind      text        NOT NULL CHECK (actor_kind IN ('member', 'operator')),
    action          text        NOT NULL,
    target          text        CHECK (length(target) <= 128),
    request_id      text        NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    outcome         text        NOT NULL CHECK (outcome IN ('succeeded', 'refused', 'failed')),
    detail          text        NOT NULL CHECK (length(detail) <= 500),
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX audit_log_by_organisation ON audit_log (organisation_id, occurred_at DESC);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
