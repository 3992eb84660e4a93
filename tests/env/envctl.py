#!/usr/bin/env python3
"""sluice's loopback environment: a real Kubernetes control plane, a local node, Kafka and MongoDB peers.

Everything binds to 127.0.0.0/8 on free ports. Builds are cached under ``.cache/`` and state (certificates,
data, logs, pids, the env file) lives under ``.env/`` (or ``$SLUICE_ENV_DIR``); both are git-ignored. The local
node runs pods of the sluice image as ``target/debug/sluice``, or the binary ``$SLUICE_BINARY`` names (``make
bench`` gives it the release build).

    envctl.py build            build or fetch what is missing (Go binaries, Maven jars, the fault peer's venv)
    envctl.py up               start every component, write .env/env, print versions and endpoints
    envctl.py down             stop every component and every pod process; fail if anything survives
    envctl.py status           what runs and where
    envctl.py run -- CMD...    up, run CMD with the environment's variables, down; exit with CMD's status
    envctl.py leftovers        list processes of this environment still alive (exit 1 if any)

Pinned versions live in the build inputs: tests/env/kube/go.mod (Kubernetes, etcd), tests/env/helm/go.mod,
tests/env/prometheus/go.mod (promtool),
tests/env/kafka/pom.xml, tests/env/mongo/pom.xml, and PYMONGO / PYTEST below (the fault peer's venv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
ENV_SRC = ROOT / "tests" / "env"
CACHE = Path(os.environ.get("SLUICE_CACHE_DIR", ROOT / ".cache"))
STATE = Path(os.environ.get("SLUICE_ENV_DIR", ROOT / ".env"))
BIN = CACHE / "bin"
VENV = CACHE / "venv"
PYMONGO = "pymongo==4.20.0"
PYTEST = "pytest==9.2.0"
NODE_NAME = "sluice-local"
# Every process the environment starts carries this variable, so `down` and `leftovers` can find them all.
MARKER = "SLUICE_ENV_MARKER"
KUBE_TOOLS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]
SLUICE_IMAGES = ["sluice", "ghcr.io/sluice-dev/sluice"]
START_TIMEOUT = 120


class EnvError(Exception):
    pass


def say(msg: str) -> None:
    print(f"[env] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, **kw)
    except FileNotFoundError as e:
        raise EnvError(f"{cmd[0]} not found: install it (see README, Development)") from e
    except subprocess.CalledProcessError as e:
        raise EnvError(f"command failed ({e.returncode}): {' '.join(map(str, cmd))}") from e


# ---------------------------------------------------------------------------------------------- build


def digest(paths: list[Path], recipe: str = "") -> str:
    h = hashlib.sha256(recipe.encode())
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def cached(name: str, inputs: list[Path], outputs: list[Path], build: Callable[[], None], recipe: str = "") -> None:
    """Runs build unless the outputs exist and were built from the same inputs and recipe (e.g. flags)."""
    stamp = CACHE / "stamps" / name
    want = digest(inputs, recipe)
    if all(p.exists() for p in outputs) and stamp.exists() and stamp.read_text() == want:
        return
    started = time.monotonic()
    say(f"building {name} ...")
    build()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(want)
    say(f"built {name} in {time.monotonic() - started:.0f}s")


def go_build(module: Path, packages: list[str], ldflags: str = "") -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    run(["go", "build", "-ldflags", ldflags, "-o", str(BIN) + "/", *packages], cwd=module, env=env)


def kube_version_ldflags(go_mod: Path) -> str:
    """Stamps the Kubernetes binaries with the pinned release, as the release build does."""
    version = next(line.split()[-1] for line in go_mod.read_text().splitlines()
                   if line.strip().startswith("k8s.io/kubernetes v") or line.startswith("require k8s.io/kubernetes v"))
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                  f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def build() -> None:
    kube = ENV_SRC / "kube"
    ldflags = kube_version_ldflags(kube / "go.mod")
    cached("kubernetes", [kube / "go.mod", kube / "go.sum", *kube.glob("cmd/**/*.go")],
           [BIN / t for t in [*KUBE_TOOLS, "etcd", "localnode"]],
           lambda: go_build(kube, [f"k8s.io/kubernetes/cmd/{t}" for t in KUBE_TOOLS] + ["./cmd/etcd", "./cmd/localnode"],
                            ldflags), recipe=ldflags)
    helm = ENV_SRC / "helm"
    cached("helm", [helm / "go.mod", helm / "go.sum"], [BIN / "helm"],
           lambda: go_build(helm, ["helm.sh/helm/v3/cmd/helm"]))
    prometheus = ENV_SRC / "prometheus"
    cached("promtool", [prometheus / "go.mod", prometheus / "go.sum"], [BIN / "promtool"],
           lambda: go_build(prometheus, ["github.com/prometheus/prometheus/cmd/promtool"]))
    for name in ("kafka", "mongo"):
        pom = ENV_SRC / name / "pom.xml"
        cached(name, [pom, *(ENV_SRC / name).glob("src/**/*.java")], [ENV_SRC / name / "target" / "lib"],
               lambda pom=pom: run(["mvn", "-B", "-q", "-f", str(pom), "package"]))
    cached("faultpeer-venv", [], [VENV / "bin" / "python"], lambda: (
        run([sys.executable, "-m", "venv", "--clear", str(VENV)]),
        run([str(VENV / "bin" / "pip"), "install", "-q", PYMONGO, PYTEST])), recipe=f"{PYMONGO} {PYTEST}")


# ---------------------------------------------------------------------------------------------- PKI


def openssl(*args: str) -> None:
    run(["openssl", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving certificate, client certificates and the service-account key pair."""
    if (pki / "done").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki / "ca.key"))
    openssl("req", "-x509", "-new", "-key", str(pki / "ca.key"), "-subj", "/CN=sluice-loopback-ca", "-days", "3650",
            "-out", str(pki / "ca.crt"))
    sans = ("DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1")
    certs = {
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
        "admin": ("/O=system:masters/CN=sluice-admin", "extendedKeyUsage=clientAuth"),
        "controller-manager": ("/CN=system:kube-controller-manager", "extendedKeyUsage=clientAuth"),
        "scheduler": ("/CN=system:kube-scheduler", "extendedKeyUsage=clientAuth"),
        "node": (f"/O=system:nodes/CN=system:node:{NODE_NAME}", "extendedKeyUsage=clientAuth"),
    }
    for name, (subject, ext) in certs.items():
        key, csr, crt, extf = (pki / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        extf.write_text(ext + "\n")
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
        openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
                "-CAcreateserial", "-days", "3650", "-extfile", str(extf), "-out", str(crt))
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    (pki / "done").write_text("")


def kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: sluice-loopback
  cluster:
    server: {server}
    certificate-authority: {pki / 'ca.crt'}
users:
- name: {user}
  user:
    client-certificate: {pki / f'{user}.crt'}
    client-key: {pki / f'{user}.key'}
contexts:
- name: sluice-loopback
  context: {{cluster: sluice-loopback, user: {user}}}
current-context: sluice-loopback
""")


# ---------------------------------------------------------------------------------------------- processes


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Component:
    name: str
    cmd: list[str]
    ready: Callable[[], bool]
    version: str = ""
    endpoint: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    pid: int = 0
    launched: float = 0.0
    # The line its log shows once it serves (for components that can be restarted alone).
    ready_line: str = ""

    @property
    def log(self) -> Path:
        return STATE / "logs" / f"{self.name}.log"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **self.env, **{MARKER: str(STATE)})
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=self.cwd, start_new_session=True)
        self.pid = proc.pid
        self.launched = time.monotonic()
        (STATE / "pids").mkdir(parents=True, exist_ok=True)
        (STATE / "pids" / f"{self.name}.pid").write_text(str(proc.pid))
        (STATE / "pids" / f"{self.name}.json").write_text(json.dumps(
            {"cmd": self.cmd, "env": self.env, "cwd": str(self.cwd) if self.cwd else None,
             "ready_line": self.ready_line, "endpoint": self.endpoint}))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        deadline = self.launched + timeout
        while time.monotonic() < deadline:
            if not alive(self.pid):
                raise EnvError(self.failure("exited during start"))
            try:
                if self.ready():
                    return time.monotonic() - self.launched
            except Exception:  # not answering yet: keep polling until the deadline
                pass
            time.sleep(0.25)
        raise EnvError(self.failure(f"not ready after {timeout:.0f}s"))

    def failure(self, what: str) -> str:
        tail = self.log.read_text(errors="replace").splitlines()[-25:] if self.log.exists() else []
        return f"{self.name} {what}; last lines of {self.log}:\n  " + "\n  ".join(tail)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def log_says(comp: Component, text: str, after: int = 0) -> Callable[[], bool]:
    """Whether the component's log shows `text` past byte `after` (a restart appends to the same log)."""
    def check() -> bool:
        if not comp.log.exists():
            return False
        with open(comp.log, "rb") as f:
            f.seek(after)
            return text.encode() in f.read()
    comp.ready_line = text
    return check


def https_ok(url: str, pki: Path | None) -> Callable[[], bool]:
    def check() -> bool:
        ctx = ssl.create_default_context()
        if pki is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.load_verify_locations(pki / "ca.crt")
            ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return resp.status == 200
    return check


def api_get(server: str, pki: Path, path: str) -> dict:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    with urllib.request.urlopen(server + path, context=ctx, timeout=5) as resp:
        return json.load(resp)


def node_ready(server: str, pki: Path) -> Callable[[], bool]:
    def check() -> bool:
        node = api_get(server, pki, f"/api/v1/nodes/{NODE_NAME}")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
    return check


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def jar_version(lib: Path, prefix: str) -> str:
    for jar in sorted(lib.glob(f"{prefix}-*.jar")):
        rest = jar.stem[len(prefix) + 1:]
        if rest[:1].isdigit():
            return rest
    return "?"


# ---------------------------------------------------------------------------------------------- up / down


def components() -> tuple[list[Component], dict[str, str]]:
    pki = STATE / "pki"
    etcd_port, etcd_peer, api, cm, sched, kafka, kafka_ctl, mongo, fault, fault_ctl = free_ports(10)
    server = f"https://127.0.0.1:{api}"
    for user in ("admin", "controller-manager", "scheduler", "node"):
        kubeconfig(STATE / f"{user}.kubeconfig", server, pki, user)

    etcd = Component("etcd", [str(BIN / "etcd"), "--name", "sluice", "--data-dir", str(STATE / "etcd"),
                              "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                              "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                              "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                              "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                              "--initial-cluster", f"sluice=http://127.0.0.1:{etcd_peer}",
                              "--unsafe-no-fsync", "--log-level", "warn"],
                     ready=lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=2).status == 200,
                     endpoint=f"http://127.0.0.1:{etcd_port}")
    issuer = "https://kubernetes.default.svc.cluster.local"
    apiserver = Component("kube-apiserver", [
        str(BIN / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", f"--service-account-issuer={issuer}", f"--api-audiences={issuer}",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction", "--endpoint-reconciler-type=none",
        "--allow-privileged=true", "--profiling=false", f"--cert-dir={STATE / 'apiserver'}"],
        ready=https_ok(f"{server}/readyz", pki), endpoint=server)
    common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"]
    controller_manager = Component("kube-controller-manager", [
        str(BIN / "kube-controller-manager"), *common, f"--secure-port={cm}",
        *(f"--{k}={STATE / 'controller-manager.kubeconfig'}" for k in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")),
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        "--use-service-account-credentials=true", "--controllers=*", f"--cert-dir={STATE / 'controller-manager'}"],
        ready=https_ok(f"https://127.0.0.1:{cm}/healthz", None), endpoint=f"https://127.0.0.1:{cm}")
    scheduler = Component("kube-scheduler", [
        str(BIN / "kube-scheduler"), *common, f"--secure-port={sched}",
        *(f"--{k}={STATE / 'scheduler.kubeconfig'}" for k in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")),
        f"--cert-dir={STATE / 'scheduler'}"],
        ready=https_ok(f"https://127.0.0.1:{sched}/healthz", None), endpoint=f"https://127.0.0.1:{sched}")

    node_dir = STATE / "node"
    node_dir.mkdir(parents=True, exist_ok=True)
    sluice_bin = Path(os.environ.get("SLUICE_BINARY", ROOT / "target" / "debug" / "sluice"))
    node_cfg = {"images": {img: str(sluice_bin) for img in SLUICE_IMAGES},
                "apiServer": server, "caFile": str(pki / "ca.crt"), "env": {"RUST_BACKTRACE": "1"}}
    (node_dir / "config.yaml").write_text(json.dumps(node_cfg, indent=2))
    node = Component("localnode", [str(BIN / "localnode"), f"--kubeconfig={STATE / 'node.kubeconfig'}",
                                   f"--node-name={NODE_NAME}", f"--state-dir={node_dir}",
                                   f"--config={node_dir / 'config.yaml'}", f"--marker={MARKER}={STATE}"],
                     ready=node_ready(server, pki), endpoint=f"node/{NODE_NAME}, pods in {node_dir / 'pods'}")

    kafka_lib = ENV_SRC / "kafka" / "target" / "lib"
    kdir = STATE / "kafka"
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "server.properties").write_text(f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{kafka_ctl}
listeners=PLAINTEXT://127.0.0.1:{kafka},CONTROLLER://127.0.0.1:{kafka_ctl}
advertised.listeners=PLAINTEXT://127.0.0.1:{kafka}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={kdir / 'data'}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
""")
    (kdir / "log4j2.properties").write_text("""status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
""")
    java_cp = f"{kafka_lib}/*"
    jvm = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={kdir / 'log4j2.properties'}", "-cp", java_cp]
    if not (kdir / "data" / "meta.properties").exists():
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # `--cluster-id=<id>`, not `-t <id>`: an id may start with '-', which the tool would read as an option.
        run([*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c",
             str(kdir / "server.properties")],
            stdout=subprocess.DEVNULL)
    kafka_c = Component("kafka", [*jvm, "kafka.Kafka", str(kdir / "server.properties")], ready=lambda: False,
                        endpoint=f"127.0.0.1:{kafka}", version=jar_version(kafka_lib, "kafka_2.13"))
    kafka_c.ready = log_says(kafka_c, "Kafka Server started")

    mongo_dir = ENV_SRC / "mongo" / "target"
    # The peer keeps every document and its whole oplog in memory: sized for the chaos runs (make chaos),
    # and it exits on running out of memory instead of answering half-dead.
    mongo_c = Component("mongo-peer", ["java", "-Xmx3g", "-XX:+ExitOnOutOfMemoryError", "-cp", f"{mongo_dir / 'mongo-peer.jar'}:{mongo_dir / 'lib'}/*",
                                       "dev.sluice.env.MongoPeer", "127.0.0.1", str(mongo)], ready=lambda: False,
                        endpoint=f"mongodb://127.0.0.1:{mongo}", version="mongo-java-server " + jar_version(mongo_dir / "lib", "mongo-java-server"))
    mongo_c.ready = log_says(mongo_c, "READY")
    fault_c = Component("fault-peer", [str(VENV / "bin" / "python"), "-u", str(ENV_SRC / "faultpeer.py"),
                                       "--listen", f"127.0.0.1:{fault}", "--upstream", f"127.0.0.1:{mongo}",
                                       "--control", f"127.0.0.1:{fault_ctl}"], ready=lambda: False,
                        endpoint=f"mongodb://127.0.0.1:{fault} (control http://127.0.0.1:{fault_ctl})",
                        version=f"faultpeer.py (OP_MSG proxy, {PYMONGO} bson)")
    fault_c.ready = log_says(fault_c, "READY")

    etcd.version = first_line([str(BIN / "etcd"), "--version"])
    for c in (apiserver, controller_manager, scheduler):
        c.version = first_line([c.cmd[0], "--version"])
    node.version = "localnode (kubelet stand-in) for " + apiserver.version

    env = {
        "SLUICE_ENV_DIR": str(STATE),
        "KUBECONFIG": str(STATE / "admin.kubeconfig"),
        "SLUICE_KUBE_APISERVER": server,
        "SLUICE_NODE_NAME": NODE_NAME,
        "SLUICE_NODE_PODS_DIR": str(node_dir / "pods"),
        "SLUICE_BIN_DIR": str(BIN),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "MONGODB_URI": f"mongodb://127.0.0.1:{mongo}/?directConnection=true",
        "SLUICE_FAULT_PEER_URI": f"mongodb://127.0.0.1:{fault}/?directConnection=true",
        "SLUICE_FAULT_PEER_CONTROL": f"http://127.0.0.1:{fault_ctl}",
        "SLUICE_ENV_MARKER": f"{MARKER}={STATE}",
    }
    return [etcd, kafka_c, mongo_c, apiserver, controller_manager, scheduler, node, fault_c], env


def up() -> dict[str, str]:
    if running_components():
        raise EnvError(f"the environment in {STATE} is already up (envctl.py down first)")
    for tool in ("go", "java", "mvn", "openssl"):
        if shutil.which(tool) is None:
            raise EnvError(f"{tool} is not installed (see README, Development)")
    build()
    began = time.monotonic()
    for sub in ("logs", "pids"):
        shutil.rmtree(STATE / sub, ignore_errors=True)
    for stale in ("etcd", "kafka", "node"):  # a fresh cluster each time: no state carried between runs
        shutil.rmtree(STATE / stale, ignore_errors=True)
    STATE.mkdir(parents=True, exist_ok=True)
    make_pki(STATE / "pki")
    comps, env = components()
    by_name = {c.name: c for c in comps}
    try:
        # JVMs and etcd start first (they take longest); the control plane follows in dependency order.
        for name in ("etcd", "kafka", "mongo-peer"):
            by_name[name].start()
        order = [("etcd", ["kube-apiserver"]), ("kube-apiserver", ["kube-controller-manager", "kube-scheduler", "localnode"]),
                 ("mongo-peer", ["fault-peer"]), ("kafka", []), ("kube-controller-manager", []),
                 ("kube-scheduler", []), ("localnode", []), ("fault-peer", [])]
        for name, then in order:
            took = by_name[name].wait_ready()
            say(f"{name:<24} ready in {took:5.1f}s  {by_name[name].endpoint}")
            for nxt in then:
                by_name[nxt].start()
        wait_for_default_service_account(env)
    except BaseException:
        say("start failed: stopping what was started")
        down(quiet=True)
        raise
    lines = [f"export {k}={v}" for k, v in env.items()]
    (STATE / "env").write_text("\n".join(lines) + "\n")
    say(f"up in {time.monotonic() - began:.0f}s; versions:")
    for c in comps:
        say(f"  {c.name:<24} {c.version}")
    say(f"env file: {STATE / 'env'}  (source it, then: {BIN / 'kubectl'} get nodes)")
    return env


def wait_for_default_service_account(env: dict[str, str]) -> None:
    """Pods can't be created in a namespace until its default ServiceAccount exists; wait for kube-system's."""
    pki = STATE / "pki"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            api_get(env["SLUICE_KUBE_APISERVER"], pki, "/api/v1/namespaces/default/serviceaccounts/default")
            return
        except Exception:
            time.sleep(0.5)
    raise EnvError("the controller-manager did not create the default ServiceAccount within 60s")


def running_components() -> list[tuple[str, int]]:
    out = []
    for pidfile in sorted((STATE / "pids").glob("*.pid")):
        pid = int(pidfile.read_text())
        if alive(pid):
            out.append((pidfile.stem, pid))
    return out


def marked_processes() -> list[tuple[int, str]]:
    """Every live process whose environment carries this environment's marker."""
    needle = f"{MARKER}={STATE}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0") and alive(int(proc.name)):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(proc.name), cmd[:160]))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def stop(pid: int, grace: float, group: bool) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds. Returns whether SIGKILL was needed."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not alive(pid):
        return False
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def down(quiet: bool = False) -> None:
    # The node first (it ends its pods' processes), then anything else started with the marker (an operator
    # run by hand or by a test), then the components, clients of the apiserver before it.
    order = ["localnode", "fault-peer", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd",
             "kafka", "mongo-peer"]
    pids = {name: pid for name, pid in running_components()}
    if "localnode" in pids:
        if stop(pids.pop("localnode"), 20, group=True):
            say("localnode ignored SIGTERM for 20s; killed it")
        elif not quiet:
            say("stopped localnode")
    component_pids = set(pids.values())
    strays = [(p, c) for p, c in marked_processes() if p not in component_pids]
    for pid, cmd in strays:
        stop(pid, 5, group=False)
    if strays and not quiet:
        say(f"stopped {len(strays)} other process(es) of the environment: " + "; ".join(c for _, c in strays))
    for name in sorted(pids, key=lambda n: order.index(n) if n in order else -1):
        if stop(pids[name], 20, group=True):
            say(f"{name} ignored SIGTERM for 20s; killed it")
        elif not quiet:
            say(f"stopped {name}")
    for pidfile in (STATE / "pids").glob("*.pid"):
        pidfile.unlink()
    survivors = marked_processes()
    for pid, _ in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    still = marked_processes()
    if survivors and not quiet:
        say(f"killed {len(survivors)} stray process(es): " + "; ".join(c for _, c in survivors))
    if still:
        raise EnvError("processes survived SIGKILL: " + "; ".join(f"{p} {c}" for p, c in still))


# Components a test may restart alone: their state survives (Kafka's data is on disk; the fault peer is a
# proxy, so restarting it drops every client connection).
RESTARTABLE = ("kafka", "fault-peer")


def restart(name: str, down_seconds: float) -> float:
    """Stops one component of the running environment, waits `down_seconds`, starts it again with the same
    command line, ports and data, and waits until it serves again. Returns the seconds it took to serve."""
    if name not in RESTARTABLE:
        raise EnvError(f"{name} can't be restarted alone (only {', '.join(RESTARTABLE)})")
    spec_file, pid_file = STATE / "pids" / f"{name}.json", STATE / "pids" / f"{name}.pid"
    if not spec_file.exists() or not pid_file.exists():
        raise EnvError(f"{name} is not running (envctl.py up first)")
    spec = json.loads(spec_file.read_text())
    stop(int(pid_file.read_text()), 20, group=True)
    time.sleep(down_seconds)
    comp = Component(name, spec["cmd"], ready=lambda: False, env=spec["env"],
                     cwd=Path(spec["cwd"]) if spec["cwd"] else None, endpoint=spec["endpoint"])
    after = comp.log.stat().st_size if comp.log.exists() else 0
    comp.ready = log_says(comp, spec["ready_line"], after)
    comp.start()
    took = comp.wait_ready()
    say(f"restarted {name} after {down_seconds:.0f}s down; serving again in {took:.1f}s")
    return took


def dead_components() -> list[str]:
    """Components whose process ended while the environment was up (a crash, running out of memory)."""
    return [p.stem for p in sorted((STATE / "pids").glob("*.pid")) if not alive(int(p.read_text()))]


def status() -> int:
    running = dict(running_components())
    env_file = STATE / "env"
    if not running:
        say(f"down (state dir {STATE})")
        return 1
    for name, pid in running.items():
        say(f"{name:<24} pid {pid}")
    if env_file.exists():
        print(env_file.read_text(), end="")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("build", "up", "down", "status", "leftovers"):
        sub.add_parser(name)
    restart_p = sub.add_parser("restart", help="stop one component, wait, start it again with its data")
    restart_p.add_argument("component", choices=RESTARTABLE)
    restart_p.add_argument("--down-seconds", type=float, default=5.0)
    run_p = sub.add_parser("run")
    run_p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    try:
        if args.cmd == "build":
            build()
        elif args.cmd == "up":
            up()
        elif args.cmd == "down":
            down()
            say("down; no process of the environment remains")
        elif args.cmd == "status":
            return status()
        elif args.cmd == "restart":
            restart(args.component, args.down_seconds)
        elif args.cmd == "leftovers":
            left = marked_processes()
            for pid, cmd in left:
                print(pid, cmd)
            return 1 if left else 0
        elif args.cmd == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("run needs a command after --")
            env = up()
            try:
                code = subprocess.call(command, env=dict(os.environ, **env))
                dead = dead_components()
                if dead:
                    for name in dead:
                        log = STATE / "logs" / f"{name}.log"
                        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
                        say(f"error: {name} died during the run; last lines of {log}:\n  " + "\n  ".join(tail))
                    code = code or 1
            finally:
                down()
                say("down; no process of the environment remains")
            return code
    except EnvError as e:
        print(f"[env] error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        down(quiet=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
