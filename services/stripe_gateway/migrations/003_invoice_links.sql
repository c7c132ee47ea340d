-- Where Stripe shows each invoice and its PDF (the Billing page links to them).
ALTER TABLE invoices
    ADD COLUMN hosted_url text CHECK (length(hosted_url) <= 2048),
    ADD COLUMN pdf_url    text CHECK (length(pdf_url) <= 2048);
CREATE INDEX invoices_by_organisation ON invoices (organisation_id, period_start DESC);
