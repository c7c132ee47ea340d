-- Budgets: monthly caps an owner sets per member, per agent, and by default per member; what
-- each member and agent spent in the organisation's current credit period (the wallet's
-- period key) is kept beside them, in the same statement as the debits that spend it.
CREATE TABLE budgets (
    organisation_id text        NOT NULL,
    scope           text        NOT NULL CHECK (scope IN ('member', 'agent', 'member_default')),
    subject_id      text        NOT NULL CHECK (length(subject_id) <= 128),
    monthly_cap     bigint      NOT NULL CHECK (monthly_cap BETWEEN 0 AND 1000000000000),
    set_by          text        NOT NULL,
    set_at          timestamptz NOT NULL,
    PRIMARY KEY (organisation_id, scope, subject_id),
    CHECK ((scope = 'member_default') = (subject_id = ''))
);

-- Kept only for organisations that have a budget; rebuilt from the ledger when the first one
-- is set (under the wallet's lock, so no debit is missed or counted twice).
CREATE TABLE budget_spend (
    organisation_id text   NOT NULL,
    period_key      text   NOT NULL,
    scope           text   NOT NULL CHECK (scope IN ('member', 'agent')),
    subject_id      text   NOT NULL,
    spent           bigint NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (organisation_id, period_key, scope, subject_id)
);

-- What changed, by whom: the budgets' own history (append-only).
CREATE TABLE budget_changes (
    seq             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id text        NOT NULL,
    scope           text        NOT NULL,
    subject_id      text        NOT NULL,
    monthly_cap     bigint,
    set_by          text        NOT NULL,
    set_at          timestamptz NOT NULL
);
CREATE TRIGGER budget_changes_append_only BEFORE UPDATE OR DELETE ON budget_changes
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

