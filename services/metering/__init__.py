"""Credit metering: wallets, the append-only credit ledger, usage debits, grants and renewals."""
