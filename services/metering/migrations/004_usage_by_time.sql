-- Usage between two instants (the Billing page's periods, `usage.py`): debits by time.
CREATE INDEX ledger_debits_by_time ON ledger (organisation_id, occurred_at) WHERE kind = 'debit';
