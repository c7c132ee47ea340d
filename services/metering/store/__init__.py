"""SQL for the metering schema, a module per part: `wallets` (wallets, debits, the ledger),
`grants` (grant commands applied, buckets), `holds` (authorizations and their holds). Functions
take a connection; the caller owns the transaction.

Lock order, everywhere: an organisation's wallet row first (several wallets in ascending
organisation id), then its buckets and hold rows, then inserts. Every path that changes
buckets, holds or wallets (usage debits, decision cycles, releases, expiry sweeps, grants)
follows it, so no two of them can deadlock."""
