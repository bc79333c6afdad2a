"""Import every contract module, so the registries know every event and command."""

import contracts.gateway
import contracts.identity
import contracts.jobs
import contracts.outputs
import contracts.process
import contracts.render
import contracts.staging
import contracts.uploads  # noqa: F401
