#!/usr/bin/env bash
# Validates deploy/ without a container engine (none runs on fleetward's CI machines):
#   - the Dockerfile with hadolint;
#   - compose.yaml against the Compose specification (check-jsonschema's vendored schema);
#   - every Kubernetes manifest against the API schemas (kubernetes-validate --strict), and the
#     kustomization's resource list against the files;
#   - the fleetward.toml the ConfigMap carries, and the compose environment, with
#     `fleetward config check` (the binary given as $1, default target/debug/fleetward).
# Install the validators with: python3 -m pip install -r scripts/deploy/requirements.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
fleetward=${1:-target/debug/fleetward}

echo "hadolint deploy/Dockerfile"
hadolint --failure-threshold warning deploy/Dockerfile

echo "compose.yaml against the Compose specification"
check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml

echo "Kubernetes manifests (strict)"
kubernetes-validate --strict --quiet deploy/k8s/namespace.yaml deploy/k8s/configmap.yaml deploy/k8s/secret.yaml \
  deploy/k8s/deployment.yaml deploy/k8s/service.yaml deploy/k8s/hpa.yaml deploy/k8s/pdb.yaml

python3 - "$fleetward" <<'PY'
import pathlib, subprocess, sys, tempfile, yaml

fleetward = sys.argv[1]
k8s = pathlib.Path("deploy/k8s")
kust = yaml.safe_load((k8s / "kustomization.yaml").read_text())
listed = set(kust["resources"])
present = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml"}
if listed != present:
    sys.exit(f"kustomization.yaml lists {sorted(listed)} but deploy/k8s has {sorted(present)}")

def check(label, toml_text, env):
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml_text)
        f.flush()
        r = subprocess.run([fleetward, "config", "check", "--config", f.name],
                           env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True)
    print(f"{label}: {r.stdout.strip()}")
    if r.returncode != 0:
        sys.exit(f"{label} is not a valid fleetward configuration:\n{r.stdout}{r.stderr}")

cm = yaml.safe_load((k8s / "configmap.yaml").read_text())
deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())
container = deployment["spec"]["template"]["spec"]["containers"][0]
env = {e["name"]: e.get("value", "placeholder") for e in container["env"]}
env["FLEETWARD_DATABASE_URL"] = "postgres://fleetward@postgres/fleetward"
env["FLEETWARD_NATS_URL"] = "nats://nats:4222"
env.pop("FLEETWARD_KEK_FILE")
check("deploy/k8s ConfigMap + Deployment env", cm["data"]["fleetward.toml"], env)

compose = yaml.safe_load(pathlib.Path("deploy/compose.yaml").read_text())
for name in ("fleetward", "fleetward-sim"):
    env = {k: str(v) for k, v in compose["services"][name]["environment"].items()}
    env = {k: v.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in deploy/.env}", "pw")
                .replace("${FLEETWARD_PUBLIC_NAME:-localhost}", "localhost") for k, v in env.items()}
    for k in ("FLEETWARD_KEK_FILE", "FLEETWARD_TRUST_CA"):
        env.pop(k, None)
    check(f"deploy/compose.yaml service {name}", "", env)
PY
echo "deploy/ is valid"
