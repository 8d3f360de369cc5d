"""The SQLSTATE codes pgwarden sends, named as in PostgreSQL's errcodes.txt.

Only codes pgwarden itself emits live here; codes relayed from the upstream pass through as the
strings they are. Keep the names identical to Postgres' condition names so that a grep of the
Postgres docs ("Appendix A. PostgreSQL Error Codes") finds them.
"""

from __future__ import annotations

from typing import Final

SUCCESSFUL_COMPLETION: Final = "00000"
WARNING: Final = "01000"

# Class 08 - Connection Exception
CONNECTION_EXCEPTION: Final = "08000"
CONNECTION_DOES_NOT_EXIST: Final = "08003"
CONNECTION_FAILURE: Final = "08006"
SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: Final = "08001"
SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: Final = "08004"
PROTOCOL_VIOLATION: Final = "08P01"

# Class 0A - Feature Not Supported
FEATURE_NOT_SUPPORTED: Final = "0A000"

# Class 22 - Data Exception
INVALID_PARAMETER_VALUE: Final = "22023"

# Class 25 - Invalid Transaction State
READ_ONLY_SQL_TRANSACTION: Final = "25006"

# Class 28 - Invalid Authorization Specification
INVALID_AUTHORIZATION_SPECIFICATION: Final = "28000"
INVALID_PASSWORD: Final = "28P01"  # noqa: S105 - a SQLSTATE, not a password

# Class 3D - Invalid Catalog Name
INVALID_CATALOG_NAME: Final = "3D000"

# Class 42 - Syntax Error or Access Rule Violation
SYNTAX_ERROR: Final = "42601"
INSUFFICIENT_PRIVILEGE: Final = "42501"

# Class 53 - Insufficient Resources
INSUFFICIENT_RESOURCES: Final = "53000"
OUT_OF_MEMORY: Final = "53200"
TOO_MANY_CONNECTIONS: Final = "53300"
CONFIGURATION_LIMIT_EXCEEDED: Final = "53400"

# Class 54 - Program Limit Exceeded
PROGRAM_LIMIT_EXCEEDED: Final = "54000"

# Class 57 - Operator Intervention
QUERY_CANCELED: Final = "57014"
ADMIN_SHUTDOWN: Final = "57P01"
CRASH_SHUTDOWN: Final = "57P02"
CANNOT_CONNECT_NOW: Final = "57P03"
IDLE_SESSION_TIMEOUT: Final = "57P05"

# Class XX - Internal Error
INTERNAL_ERROR: Final = "XX000"
