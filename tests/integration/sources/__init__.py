"""Integration tests of the database source adapters against real servers (MongoDB: stand-ins)."""
