-- One-off payments (PaymentIntents: credit packs bought through Checkout, auto-recharges
-- charged off-session), as last fetched from Stripe, versioned per payment as subscriptions
-- and invoices are.
CREATE TABLE payments (
    payment_intent_id text        PRIMARY KEY CHECK (length(payment_intent_id) <= 255),
    organisation_id   text        NOT NULL,
    customer_id       text,
    status            text        NOT NULL,
    amount            bigint      NOT NULL CHECK (amount >= 0),
    amount_received   bigint      NOT NULL CHECK (amount_received >= 0),
    amount_refunded   bigint      NOT NULL CHECK (amount_refunded >= 0),
    currency          text        NOT NULL CHECK (length(currency) = 3),
    purchase_id       text,
    failure_code      text,
    version           bigint      NOT NULL CHECK (version >= 1),
    observed_at       timestamptz NOT NULL
);
CREATE INDEX payments_by_organisation ON payments (organisation_id);
