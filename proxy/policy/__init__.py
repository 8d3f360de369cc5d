"""The policy: who may ask for what, who approves, and the state of requests and grants.

`models.py` holds the typed, immutable policy values; `policy_file.py` makes them from the admins'
YAML (strictly: `yaml_strict.py`, `fields.py`, `durations.py`) and `reload.py` swaps them in when
the file changes. Import the modules themselves; this package keeps nothing heavy here.
"""
