"""shop-crm: payment reminders and follow-up visits for online shops (see README.md)."""

# the command's defaults, here so that `crm --help` need not import crm.config (pydantic)
DEFAULT_DB = "data/crm.duckdb"
DEFAULT_CONFIG = "shops.toml"

# logs never carry a full phone number or e-mail: every log record of a process that uses the package is
# masked (crm/redact.py), under the explicit masking where gateway and SMTP answers are logged
from crm.redact import install_log_redaction as _install_log_redaction  # noqa: E402

_install_log_redaction()
