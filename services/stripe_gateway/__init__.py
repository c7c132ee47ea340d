"""The Stripe gateway: the only service that talks to Stripe or holds a Stripe key."""

PRODUCER = "stripe-gateway"
"""The `producer` of every event the gateway publishes."""
