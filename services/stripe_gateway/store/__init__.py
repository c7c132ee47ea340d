"""SQL for the gateway's schema, one module per concern. Functions take a connection or the
pool; a caller that needs a transaction opens it. Rows leave as typed objects."""
