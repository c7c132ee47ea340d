"""The services. Each registers itself in pyproject.toml (`billing.services` and
`billing.cli` entry points); `shared/` finds them there and never imports this package."""
