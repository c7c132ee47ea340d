-- Usage sent raw (agent_message.processed.v2) is priced with the rate card in force when it
-- occurred; its debit records the version, the line (model) and what was priced. A debit of an
-- event that carried its credits (v1) has none of them.
ALTER TABLE ledger
    ADD COLUMN rate_card     text,
    ADD COLUMN model         text,
    ADD COLUMN input_tokens  bigint CHECK (input_tokens >= 0),
    ADD COLUMN output_tokens bigint CHECK (output_tokens >= 0),
    ADD COLUMN tool_calls    integer CHECK (tool_calls >= 0),
    ADD CONSTRAINT ledger_priced_debits CHECK (
        (rate_card IS NULL OR kind = 'debit')
        AND (rate_card IS NULL) = (model IS NULL)
        AND (rate_card IS NULL) = (input_tokens IS NULL)
        AND (rate_card IS NULL) = (output_tokens IS NULL)
        AND (rate_card IS NULL) = (tool_calls IS NULL));
