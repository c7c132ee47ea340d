"""`python -m services.dashboard [serve|migrate]`."""

from shared.service import main

from .app import SERVICE

if __name__ == "__main__":
    main(SERVICE)
