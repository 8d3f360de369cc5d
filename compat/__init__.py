"""`make compat`: client test suites run directly against PostgreSQL and through pgwarden."""
