"""Replicas across hosts sharing one PostgreSQL state store: change feed, registry, leader."""
