"""A Python client generated from deploy/openapi.json (openapi-python-client), used as a
new user would: a send, one with the optional headers, and a 422 read as a Problem."""
import random
import sys

from relay_client import AuthenticatedClient
from relay_client.api.flow_messages import send_flow_message
from relay_client.models import FlowMessageRequest, Problem, SentResponse

SEED = {
    "bot": "ventas",
    "title": "Hola",
    "text": "Completa este flujo para comenzar",
    "caption": "Jelou",
    "flow": {"name": "flujo_de_bienvenida", "cta": "Iniciar Flujo", "screen": "RECOMMEND"},
}


def message(**changes):
    """The seed message to a recipient of its own: the relay may already have sent to the
    seed's recipient up to WhatsApp's pair limit."""
    return FlowMessageRequest.from_dict(
        dict(SEED, to=f"+59398{random.randrange(10**7):07d}", **changes)
    )


# Local mode runs without callers: the bearer key is not checked.
client = AuthenticatedClient(base_url=sys.argv[1], token="unused-in-local-mode")
checks = 0

first = message()
sent = send_flow_message.sync_detailed(client=client, body=first)
assert sent.status_code == 200, sent
assert isinstance(sent.parsed, SentResponse), sent.parsed
assert sent.parsed.status == "sent" and "+" + sent.parsed.to == first.to, sent.parsed
checks += 1

key = "python-client-" + sys.argv[2]
keyed = message()
with_headers = send_flow_message.sync_detailed(
    client=client,
    body=keyed,
    x_request_timeout_ms=3000,
    idempotency_key=key,
)
assert with_headers.status_code == 200, with_headers
assert isinstance(with_headers.parsed, SentResponse), with_headers.parsed
replay = send_flow_message.sync_detailed(client=client, body=keyed, idempotency_key=key)
assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true", replay
checks += 1

refused = send_flow_message.sync_detailed(client=client, body=message(title=""))
assert refused.status_code == 422, refused
assert isinstance(refused.parsed, Problem), refused.parsed
assert refused.parsed.code == "validation_failed", refused.parsed
assert [e.field for e in refused.parsed.errors] == ["title"], refused.parsed.errors
checks += 1

print(f"generated Python client: {checks} passed, 0 failed")
