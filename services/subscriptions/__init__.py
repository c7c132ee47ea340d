"""Subscriptions: plans, owner-only changes, billing cycles and monthly credit renewal."""

PRODUCER = "subscriptions"
"""The `producer` of every event the subscription service publishes."""
