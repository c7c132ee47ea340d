-- One debit per (organisation, message): a second usage event for a message already debited,
-- under another event id, is refused (`duplicate_message`) instead of charging it again.
CREATE UNIQUE INDEX ledger_one_debit_per_message
    ON ledger (organisation_id, message_id) WHERE kind = 'debit';
