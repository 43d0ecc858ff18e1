"""The gateway's composition root: one public API, as the launcher and the test fixtures see it."""

from crm_shared.runtime.service import Service, api_process
from gateway_service.config import GatewaySettings

SERVICE = Service("gateway", GatewaySettings, (api_process("gateway", GatewaySettings),))
