-- Credit packs bought (Checkout in payment mode) or charged by auto-recharge, followed until
-- Stripe holds them paid (then granted once), failed or refunded (then clawed back once).
CREATE TABLE credit_purchases (
    purchase_id       text        PRIMARY KEY CHECK (length(purchase_id) <= 64),
    organisation_id   text        NOT NULL,
    pack              text        NOT NULL,
    credits           bigint      NOT NULL CHECK (credits > 0),
    price             bigint      NOT NULL CHECK (price > 0),
    currency          text        NOT NULL CHECK (length(currency) = 3),
    valid_days        integer     NOT NULL CHECK (valid_days > 0),
    source            text        NOT NULL CHECK (source IN ('checkout', 'auto_recharge')),
    status            text        NOT NULL CHECK (status IN ('open', 'paid', 'failed')),
    requested_by      text,
    checkout_url      text        CHECK (length(checkout_url) <= 2048),
    payment_intent_id text,
    payment_version   bigint      NOT NULL DEFAULT 0,
    refunded          bigint      NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    clawed_back       bigint      NOT NULL DEFAULT 0 CHECK (clawed_back >= 0 AND clawed_back <= credits),
    failure_code      text,
    created_at        timestamptz NOT NULL,
    paid_at           timestamptz,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX credit_purchases_by_organisation ON credit_purchases (organisation_id, created_at);

-- An owner's auto-recharge: when the balance falls to the threshold, one pack is charged
-- off-session (once per crossing), never more than the monthly cap; it turns itself off after
-- repeated failures.
CREATE TABLE auto_recharges (
    organisation_id text        PRIMARY KEY,
    enabled         boolean     NOT NULL,
    threshold       bigint      NOT NULL CHECK (threshold >= 0),
    pack            text        NOT NULL,
    monthly_cap     bigint      NOT NULL CHECK (monthly_cap > 0),
    armed           boolean     NOT NULL DEFAULT true,
    crossings       bigint      NOT NULL DEFAULT 0,
    in_flight       text,
    failures        integer     NOT NULL DEFAULT 0 CHECK (failures >= 0),
    retry_at        timestamptz,
    last_failure    text,
    disabled_reason text,
    balance_revision bigint     NOT NULL DEFAULT -1,
    updated_by      text,
    updated_at      timestamptz NOT NULL
);
