"""The billing dashboard: each organisation's Billing page, live, projected from the topics."""

PRODUCER = "dashboard"
