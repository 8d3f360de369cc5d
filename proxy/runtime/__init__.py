"""The composition root: `serve` builds every part from the config and runs them; the session
observers that feed the audit log and the metrics, the metric declarations, and housekeeping."""
