"""Where `Submission` and `status_update` were imported from before the run lifecycle became a
package (jobd.lifecycle): kept for the web modules that still do."""

from __future__ import annotations

from jobd.lifecycle import INTERRUPTED, Submission, no_longer_configured
from jobd.models import status_update

__all__ = ["INTERRUPTED", "Submission", "no_longer_configured", "status_update"]
