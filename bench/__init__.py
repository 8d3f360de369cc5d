"""`make bench`: pgwarden's overhead against direct Postgres and pgbouncer (see bench/README.md)."""
