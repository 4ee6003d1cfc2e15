#!/usr/bin/env python3
"""Parses deploy/k8s/*.yaml and checks the fields the deployment relies on.

Exits non-zero, naming every problem, when a manifest does not parse or lacks
a required field. Needs python3-yaml.
"""
import glob
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


def container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


docs = {}
for path in sorted(glob.glob(os.path.join(HERE, "k8s", "*.yaml"))):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                docs[(doc["kind"], doc["metadata"]["name"])] = doc

with open(os.path.join(HERE, "Dockerfile")) as f:
    grace = int(re.search(r"--shutdown_grace_s=(\d+)", f.read()).group(1))

server = docs.get(("Deployment", "sae-server"))
need(server is not None, "Deployment sae-server is missing")
if server:
    need(server["spec"]["replicas"] >= 2, "sae-server needs at least 2 replicas")
    c = container(server)
    for probe in ("readinessProbe", "livenessProbe"):
        need(c.get(probe, {}).get("grpc", {}).get("port") == 8081,
             f"sae-server {probe} must be gRPC on the health port 8081")
    for kind in ("requests", "limits"):
        need({"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"sae-server resources.{kind} needs cpu and memory")
    tgps = server["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    need(tgps > grace, f"terminationGracePeriodSeconds ({tgps}) must exceed the server's shutdown grace ({grace})")
    need("--accept_training=false" in c.get("args", []), "serving replicas should not train")
    mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
    need("/var/lib/sae" in mounts, "sae-server must mount the store at /var/lib/sae")

svc = docs.get(("Service", "sae-server"))
need(svc is not None and svc["spec"].get("clusterIP") == "None", "Service sae-server must be headless (clusterIP: None)")

# Transport security: TLS with tokens, and a plaintext health-only port for the probes.
for name in ("sae-server", "sae-trainer"):
    d = docs.get(("Deployment", name))
    if d:
        args = container(d).get("args", [])
        for flag in ("--tls_cert=", "--tls_key=", "--token_file=", "--health_listen=0.0.0.0:8081"):
            need(any(a.startswith(flag) for a in args), f"{name} needs {flag}")
        need("--plaintext" not in args, f"{name} must not serve plaintext")
        secrets = {v.get("secret", {}).get("secretName") for v in d["spec"]["template"]["spec"]["volumes"]}
        need({"sae-tls", "sae-tokens"} <= secrets, f"{name} must mount the Secrets sae-tls and sae-tokens")

trainer = docs.get(("Deployment", "sae-trainer"))
need(trainer is not None, "Deployment sae-trainer is missing")
if trainer:
    need("--accept_training=true" in container(trainer).get("args", []), "sae-trainer must accept training")
    waits = [int(a.split("=", 1)[1]) for a in container(trainer).get("args", [])
             if a.startswith("--jobs_lock_wait_s=")]
    need(waits, "sae-trainer must wait for its journal's lock (a dead node's NFS lease)")
    # The health port opens only once the lock is held: until then kubelet must
    # not count the container as dead.
    startup = container(trainer).get("startupProbe", {})
    window = startup.get("initialDelaySeconds", 0) + \
        startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    need(startup.get("grpc", {}).get("port") == 8081 and waits and window > waits[0] + 30,
         f"sae-trainer needs a gRPC startupProbe on 8081 that outlasts --jobs_lock_wait_s "
         f"plus 30 s of start-up (it allows {window} s)")

pvc = docs.get(("PersistentVolumeClaim", "sae-store"))
need(pvc is not None and "ReadWriteMany" in pvc["spec"]["accessModes"], "PVC sae-store must be ReadWriteMany")
for name in ("sae-server", "sae-trainer"):
    d = docs.get(("Deployment", name))
    if d:
        claims = [v.get("persistentVolumeClaim", {}).get("claimName") for v in d["spec"]["template"]["spec"]["volumes"]]
        need("sae-store" in claims, f"{name} must use the sae-store claim")

# Pod hardening (the "restricted" Pod Security Standard): every workload.
for kind, name in (("Deployment", "sae-server"), ("Deployment", "sae-trainer"),
                   ("Job", "sae-denoise-batch")):
    d = docs.get((kind, name))
    if not d:
        continue
    pod = d["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, f"{name} must run as non-root")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name} needs seccompProfile RuntimeDefault")
    csc = container(d).get("securityContext", {})
    need(csc.get("allowPrivilegeEscalation") is False, f"{name} must set allowPrivilegeEscalation: false")
    need("ALL" in csc.get("capabilities", {}).get("drop", []), f"{name} must drop all capabilities")
    need(csc.get("readOnlyRootFilesystem") is True, f"{name} needs a read-only root filesystem")
    mounts = {m["mountPath"]: m["name"] for m in container(d).get("volumeMounts", [])}
    empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    need(mounts.get("/tmp") in empty, f"{name} needs an emptyDir at /tmp (the root is read-only)")

job = docs.get(("Job", "sae-denoise-batch"))
need(job is not None, "Job sae-denoise-batch is missing")
if job:
    need(container(job)["image"].startswith("sae-client"), "the batch Job must use the client image")
    need(job["spec"]["template"]["spec"].get("restartPolicy") in ("Never", "OnFailure"), "Job restartPolicy")
    args = container(job).get("args", [])
    need(any(a.startswith("--tls-ca=") for a in args) and any(a.startswith("--token-file=") for a in args),
         "the batch Job must use TLS and a token")

if problems:
    for p in problems:
        print(f"k8s: {p}", file=sys.stderr)
    sys.exit(1)
print(f"k8s: {len(docs)} objects parsed, required fields present")
