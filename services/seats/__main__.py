"""`python -m services.seats [serve|migrate]`."""

from shared.service import main

from .app import SERVICE

if __name__ == "__main__":
    main(SERVICE)
