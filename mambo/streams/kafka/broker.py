"""An Apache Kafka broker (KRaft, combined broker + controller) on 127.0.0.1, no Docker.

The jars come from Maven Central through the pom in ``deploy/kafka/pom.xml`` and are copied once into
a cache folder (``~/.cache/mambo/kafka-<version>-<pom hash>/lib``; Maven's ``~/.m2`` keeps the downloads), so
every checkout shares them. :class:`KafkaBroker` formats a data folder with ``kafka.tools.StorageTool``,
starts ``kafka.Kafka server.properties`` with Java 17, writes the broker's log to
``<data_dir>/broker.log``, waits until the broker answers a metadata request, and stops it with
SIGTERM (SIGKILL only if it will not go). ``mambo kafka start|stop|status`` is the front. Alone, a
broker is node 1 and its own controller quorum; :class:`~mambo.streams.kafka.cluster.KafkaCluster`
runs several as one cluster (``mambo kafka start --brokers 3``).

Version: Kafka 4.3.1. The newest, 4.4.0, does not resolve from Maven Central (its
``kafka-tools-api`` artifact is missing there), so the launcher uses the newest that does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KAFKA_VERSION", "BrokerError", "KafkaBroker", "fetch_jars", "free_port", "jar_dir", "min_insync"]

KAFKA_VERSION = "4.3.1"
_POM = Path(__file__).resolve().parents[3] / "deploy" / "kafka" / "pom.xml"
_LOG4J = """\
Configuration:
  Appenders:
    File:
      name: file
      fileName: "{log}"
      PatternLayout: {{pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {{level: INFO, AppenderRef: [{{ref: file}}]}}
    Logger:
      - {{name: kafka.request.logger, level: WARN}}
      - {{name: org.apache.kafka.controller, level: WARN}}
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or reached; the message says where to look."""


def jar_dir() -> Path:
    """The jar cache, one per content of the pom (an edited pom fetches afresh)."""
    digest = hashlib.sha256(_POM.read_bytes()).hexdigest()[:10] if _POM.exists() else "nopom"
    default = Path.home() / ".cache" / "mambo" / f"kafka-{KAFKA_VERSION}-{digest}"
    return Path(os.environ.get("MAMBO_KAFKA_JARS") or default) / "lib"


def fetch_jars(quiet: bool = True) -> Path:
    """Copy the broker's jars into :func:`jar_dir` with Maven (once; a marker file says it is done)."""
    lib = jar_dir()
    marker = lib / ".complete"
    if marker.exists():
        return lib
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed to fetch Kafka's jars: apt-get install maven")
    if not _POM.exists():
        raise BrokerError(f"the broker's pom is missing: {_POM}")
    tmp = lib.with_name(f"lib.{uuid.uuid4().hex[:8]}")
    cmd = ["mvn", "-f", str(_POM), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
    proc = subprocess.run([*cmd[:1], "-q", *cmd[1:]] if quiet else cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(f"mvn failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    (tmp / ".complete").write_text(KAFKA_VERSION)
    try:
        tmp.rename(lib)  # atomic: a concurrent fetch either wins or finds the folder complete
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own exited child) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


@dataclass
class KafkaBroker:
    """One broker whose whole state (config, log, data, pid) lives in ``data_dir``."""

    data_dir: Path
    port: int = 9092
    heap: str = "512m"
    #: C1 JIT only: the broker starts in about half the time but serves requests slower for good
    #: (a transaction across 48 partitions: 33 against 22 ms p50, warm). For tests, which start
    #: brokers often and load them little; MAMBO_KAFKA_QUICK_START=1 sets it for a whole run.
    quick_start: bool = field(default_factory=lambda: os.environ.get("MAMBO_KAFKA_QUICK_START") == "1")
    #: In a cluster: this node's id, its controller port (fixed: the quorum's voters name it), the
    #: voters, the cluster id every node is formatted with, the replication of Kafka's own topics
    #: (offsets, transaction state), and extra broker settings. Alone: node 1 votes for itself on a
    #: controller port chosen at each start.
    node_id: int = 1
    controller_port: int | None = None
    voters: str | None = None
    cluster_id: str | None = None
    replication: int = 1
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _write_config(self, controller_port: int) -> Path:
        rf, min_isr = str(self.replication), str(min_insync(self.replication))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": rf,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.flush.interval.messages": "9223372036854775807",
            **self.settings,
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, lib: Path, main: str, *args: str, log4j: Path) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            # as Kafka's own scripts (kafka-run-class.sh) start it: short young pauses, for latency
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            *(["-XX:TieredStopAtLevel=1"] if self.quick_start else []),
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Format (first time), start, and wait until the broker answers; BrokerError if not."""
        self.wait(self.launch(), timeout)

    def launch(self) -> subprocess.Popen[bytes]:
        """Format (first time) and start the JVM, without waiting for it (a cluster's nodes start
        together: none answers before a majority of the controllers runs)."""
        if self.pid() is not None:
            raise BrokerError(f"a broker already runs from {self.data_dir} (pid {self.pid()})")
        if shutil.which("java") is None:
            raise BrokerError("Java 17+ is needed to run Kafka: apt-get install openjdk-17-jre-headless")
        lib = fetch_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log4j = self.data_dir / "log4j2.yaml"
        log4j.write_text(_LOG4J.format(log=self.log_file))
        config = self._write_config(self.controller_port or free_port())
        if not (self.data_dir / "data" / "meta.properties").exists():
            fmt = self._java(
                lib,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id or uuid.uuid4().hex[:22],
                "-c",
                str(config),
                "--ignore-formatted",
                log4j=log4j,
            )
            proc = subprocess.run(fmt, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BrokerError(f"storage format failed: {(proc.stdout + proc.stderr)[-2000:]}")
        with open(self.data_dir / "broker.out", "ab") as out:
            jvm = subprocess.Popen(
                self._java(lib, "kafka.Kafka", str(config), log4j=log4j),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the launching shell does not kill the broker
            )
        self._pid_file.write_text(str(jvm.pid))
        return jvm

    def wait(self, jvm: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        """Wait until the launched broker answers as a live broker; stop it and BrokerError if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if jvm.poll() is not None:
                raise BrokerError(f"the broker exited ({jvm.returncode}); see {self.log_file}")
            if self.ready(timeout=1.0):
                return
            time.sleep(0.3)
        self.stop()
        raise BrokerError(f"the broker did not answer within {timeout:.0f}s; see {self.log_file}")

    def ready(self, timeout: float = 2.0) -> bool:
        """True when the broker answers a metadata request naming itself a live broker."""
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(
                timeout=timeout
            )
        except Exception:
            return False
        return self.node_id in md.brokers

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM and wait for a clean shutdown; SIGKILL after ``timeout``. False if none ran."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        self._pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL, as a crash would (no controlled shutdown): for the broker-kill tests and benchmark."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.02)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        self._pid_file.unlink(missing_ok=True)
        return True


def min_insync(replication: int) -> int:
    """``min.insync.replicas`` for a replication factor: all but one replica (3 -> 2), at least 1, so
    an acknowledged write (acks=all) is on two brokers and one broker can die without stopping writes."""
    return max(1, min(replication - 1, 2))
