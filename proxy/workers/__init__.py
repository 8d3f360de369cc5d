"""Several processes on one host and one port: the primary's worker set, a worker's link to the
primary, the channel between them, what they share, how a runtime is wired into them."""
