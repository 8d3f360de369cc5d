"""One client session's life: accept, handshake, login, relay, the one exit, the registry of live
sessions, admission limits, the observers' interface, and the enforcer that ends expired ones."""
