"""The database side: connecting and logging in as a grant's role, the pool of kept backends,
the backstop that ends backends (`pg_terminate_backend`), and one-shot queries and probes."""
