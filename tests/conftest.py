"""Suite-wide settings. The broker, the database and per-test isolation come from the
`shared.testing.plugin` pytest plugin; each service's fixtures live in its own folder."""

from hypothesis import settings

# Integration examples drive a real broker and database: no per-example deadline.
settings.register_profile("billing", deadline=None, print_blob=True)
settings.load_profile("billing")
