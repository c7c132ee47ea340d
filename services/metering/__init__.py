"""Credit metering: wallets, the append-only credit ledger, usage debits, grants and renewals."""

PRODUCER = "metering"
"""The `producer` of every event metering publishes."""
