-- What the active holds of each member and agent reserve, kept beside the holds (taken,
-- settled, released, expired) for organisations that have a budget: a decision reads it
-- instead of summing the organisation's holds. Rebuilt from the holds when the organisation's
-- first budget is set, under the wallet's lock.
CREATE TABLE budget_held (
    organisation_id text   NOT NULL,
    scope           text   NOT NULL CHECK (scope IN ('member', 'agent')),
    subject_id      text   NOT NULL,
    held            bigint NOT NULL CHECK (held >= 0),
    PRIMARY KEY (organisation_id, scope, subject_id)
);
