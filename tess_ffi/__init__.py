"""tess-ffi: light curves for every star on a TESS CCD, from calibrated FFIs to a lakehouse.

Importing this package sets the process-wide defaults the platform relies on before
Prefect or astropy are imported: no telemetry, a generous ephemeral-server start-up
timeout, and no IERS downloads (the machine may be offline).
"""

from __future__ import annotations

import os

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
}.items():
    os.environ.setdefault(_key, _value)


def _astropy_offline() -> None:
    """Turn off astropy's IERS and leap-second auto-downloads (bundled tables are used)."""
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None


_astropy_offline()

__version__ = "0.1.0"
