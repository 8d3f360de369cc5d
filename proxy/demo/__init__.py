"""`pgwarden demo` and the throwaway PostgreSQL it (and the test harness) runs on loopback."""
