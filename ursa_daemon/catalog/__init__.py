"""The LanceDB catalog (being split into modules; see core)."""

from ursa_daemon.catalog.core import *  # noqa: F403
from ursa_daemon.catalog.core import __all__  # noqa: F401
