"""Seats: active members, seat limits, and the seat quantity in Stripe."""

PRODUCER = "seats"
"""The `producer` of every event the seat service publishes."""
