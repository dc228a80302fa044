"""Callbacks checked by Standard Webhooks' reference library (`standardwebhooks` on PyPI).

A receiver answers 204 only when `Webhook(secret).verify(body, headers)` accepts a
callback, and 401 otherwise; the relay (local mode: sandbox, memory store, asynchronous
sending on) runs with a caller whose `callback_url` points at it. Messages that end
`sent` and `canceled` are queued; every callback must verify, and each message's must
arrive.

    python3 .ci/callback_check.py RELAY_BINARY
"""
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from standardwebhooks.webhooks import Webhook


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


binary = sys.argv[1]
secret = subprocess.run([binary, "new-callback-secret"], capture_output=True, text=True,
                        check=True).stdout.strip()
caller_key = "callback-check-key-0123456789abcdef"
key_sha256 = hashlib.sha256(caller_key.encode()).hexdigest()
verifier = Webhook(secret)
verified, refused = [], []


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            payload = verifier.verify(body, headers)
            verified.append((headers["webhook-id"], payload))
            self.send_response(204)
        except Exception as error:  # the library's verification error
            refused.append(repr(error))
            self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()

port, admin = free_port(), free_port()
env = dict(os.environ,
           JELOU_RELAY__SERVER__PORT=str(port), JELOU_RELAY__SERVER__HOST="127.0.0.1",
           JELOU_RELAY__ADMIN__PORT=str(admin),
           JELOU_RELAY__CALLERS__CHECK__KEY_SHA256=key_sha256,
           JELOU_RELAY__CALLERS__CHECK__CALLBACK_URL=f"http://127.0.0.1:{receiver.server_port}/hook",
           JELOU_RELAY__CALLERS__CHECK__CALLBACK_SECRET=secret,
           # One message per recipient at a time: the second waits, and is canceled.
           JELOU_RELAY__RECIPIENTS__RATE_PER_SECOND="0.01",
           JELOU_RELAY__RECIPIENTS__BURST="1")
relay = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
try:
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)

    def call(method, path, body=None):
        request = urllib.request.Request(
            base + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"content-type": "application/json", "prefer": "respond-async",
                     "authorization": f"Bearer {caller_key}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    message = {"bot": "ventas", "to": "+593 98 765 4321", "title": "Hola", "text": "Completa",
               "caption": "Jelou", "flow": {"name": "flujo", "cta": "Iniciar Flujo"}}
    sent = call("POST", "/v1/flow-messages", message)["id"]
    waiting = call("POST", "/v1/flow-messages", message)["id"]
    call("DELETE", f"/v1/flow-messages/{waiting}")
    batch = call("POST", "/v1/flow-messages/batch",
                 {"messages": [dict(message, to=f"+59399{i:07d}") for i in range(3)]})
    expected = {sent: "sent", waiting: "canceled"}
    expected.update({item["id"]: "sent" for item in batch["items"]})
    deadline = time.monotonic() + 30
    while len(verified) < len(expected) and time.monotonic() < deadline and not refused:
        time.sleep(0.1)
    got = {webhook_id: payload["status"] for webhook_id, payload in verified}
    print(f"callbacks verified by standardwebhooks: {len(verified)}; refused: {len(refused)}")
    if refused or got != expected:
        sys.exit(f"expected {expected}, verified {got}, refused {refused}")
finally:
    relay.terminate()
    relay.wait(timeout=30)
    receiver.shutdown()
