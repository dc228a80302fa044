"""A Python client generated from deploy/openapi.json (openapi-python-client), used as a
new user would: a send, one with the optional headers, and a 422 read as a Problem."""
import sys

from relay_client import AuthenticatedClient
from relay_client.api.flow_messages import send_flow_message
from relay_client.models import FlowMessageRequest, Problem, SentResponse

SEED = {
    "bot": "ventas",
    "to": "+593 98 765 4321",
    "title": "Hola",
    "text": "Completa este flujo para comenzar",
    "caption": "Jelou",
    "flow": {"name": "flujo_de_bienvenida", "cta": "Iniciar Flujo", "screen": "RECOMMEND"},
}

# Local mode runs without callers: the bearer key is not checked.
client = AuthenticatedClient(base_url=sys.argv[1], token="unused-in-local-mode")
checks = 0

sent = send_flow_message.sync_detailed(client=client, body=FlowMessageRequest.from_dict(SEED))
assert sent.status_code == 200, sent
assert isinstance(sent.parsed, SentResponse), sent.parsed
assert sent.parsed.status == "sent" and sent.parsed.to == "593987654321", sent.parsed
checks += 1

key = "python-client-" + sys.argv[2]
with_headers = send_flow_message.sync_detailed(
    client=client,
    body=FlowMessageRequest.from_dict(SEED),
    x_request_timeout_ms=3000,
    idempotency_key=key,
)
assert with_headers.status_code == 200, with_headers
assert isinstance(with_headers.parsed, SentResponse), with_headers.parsed
replay = send_flow_message.sync_detailed(
    client=client, body=FlowMessageRequest.from_dict(SEED), idempotency_key=key
)
assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true", replay
checks += 1

bad = dict(SEED, title="")
refused = send_flow_message.sync_detailed(client=client, body=FlowMessageRequest.from_dict(bad))
assert refused.status_code == 422, refused
assert isinstance(refused.parsed, Problem), refused.parsed
assert refused.parsed.code == "validation_failed", refused.parsed
assert [e.field for e in refused.parsed.errors] == ["title"], refused.parsed.errors
checks += 1

print(f"generated Python client: {checks} passed, 0 failed")
