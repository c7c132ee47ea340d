"""Thin adapters: FastStream subscribers (`kafka`) and HTTP routes (`http`)."""
