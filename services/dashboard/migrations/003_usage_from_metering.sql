-- Usage is read from metering's ledger (its API), not projected from the raw usage topic: the
-- page showed usage metering had refused (a second event for the same message).
DROP TABLE usage;
