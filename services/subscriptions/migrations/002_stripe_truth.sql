-- The newest state of the organisation's Stripe subscription applied, with the gateway's
-- version of it (reports are ordered by that version, never by Stripe's timestamps); what
-- Stripe holds stands again over an owner's request when a command to Stripe fails.
ALTER TABLE subscriptions ADD COLUMN stripe_facts jsonb;

-- Enterprise features are identifiers; kept as they are (a comma in one no longer splits it).
ALTER TABLE subscriptions ALTER COLUMN enterprise_features TYPE jsonb USING to_jsonb(enterprise_features);
