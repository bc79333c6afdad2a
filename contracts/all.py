"""Import every contract module, so the registries know every event and command."""

import contracts.billing
import contracts.fleet
import contracts.gateway
import contracts.identity
import contracts.jobs
import contracts.notifications
import contracts.operations
import contracts.outputs
import contracts.payments
import contracts.preparation
import contracts.process
import contracts.render
import contracts.staging
import contracts.uploads
import contracts.wallet  # noqa: F401
