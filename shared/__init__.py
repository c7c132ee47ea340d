"""What every service uses: event schemas and the topic registry, settings, logging, database,
outbox and consumer helpers, the embedded development stack and the test fixtures."""
