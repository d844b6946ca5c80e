"""Driftline over a SASL_SSL broker: the test stack's SASL_SSL listener (SCRAM-SHA-512, a CA and a
broker certificate made at start by infra/stack.sh, DRIFTLINE_KAFKA_SASL_SSL=1, which
infra/with-test-stack.sh sets).

The closed loop's core runs with every client on that listener only: topics and schemas made by
`init_isolated`, the six services as real processes, the scenario's own producer and consumer. A
wrong password and an untrusted certificate are refused at once with a message that says so,
not retried as an outage.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from driftline.catalog import EVENTS_RAW
from driftline.connect import KafkaRefused
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import StackSettings, find_stack_env
from driftline_cli.examples.loan_approval.scenario import Scenario, ScenarioConfig
from tests.support import Namespace, create_namespace, drop_namespace, running_services


def sasl_ssl_settings() -> dict[str, str]:
    """The client settings infra/stack.sh wrote for the SASL_SSL listener (test-only secrets)."""
    stack_env = find_stack_env()
    path = stack_env.parent / "kafka-sasl-ssl.env" if stack_env is not None else None
    if path is None or not path.is_file():
        why = f"the stack ({stack_env}) has no SASL_SSL listener: start it with DRIFTLINE_KAFKA_SASL_SSL=1"
        if os.environ.get("DRIFTLINE_KAFKA_SASL_SSL") == "1":  # the test stack (with-test-stack.sh, make test)
            pytest.fail(f"{why} (a stack started before it had one? `make test-down` and run again)")
        pytest.skip(f"{why} (make test and make test-up do)")
    settings = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.removeprefix("DRIFTLINE_").lower()] = value
    return settings


@pytest.fixture(scope="module")
def secure_stack(base_stack: StackSettings) -> StackSettings:
    secure = base_stack.model_copy(update=StackSettings(**sasl_ssl_settings()).model_dump(include=KAFKA_FIELDS))
    assert secure.kafka.security_protocol == "SASL_SSL"
    assert secure.kafka_bootstrap_servers != base_stack.kafka_bootstrap_servers
    return secure


KAFKA_FIELDS = {
    "kafka_bootstrap_servers",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_ca_file",
}


@pytest.fixture
async def secure_namespace(secure_stack: StackSettings) -> AsyncIterator[Namespace]:
    ns = await create_namespace(secure_stack, "sec")  # topics created over SASL_SSL
    yield ns
    await drop_namespace(ns, secure_stack)


async def start_producer(stack: StackSettings) -> None:
    registry = SchemaRegistryClient.from_settings(stack)
    producer = EventProducer(stack.kafka, AvroSerde(registry, topic_prefix=stack.topic_prefix), "secure-test")
    try:
        await asyncio.wait_for(producer.start([EVENTS_RAW]), 60)
    finally:
        await producer.stop()
        await registry.close()


async def test_the_right_credentials_connect(secure_stack: StackSettings) -> None:
    await start_producer(secure_stack)


async def test_a_wrong_password_is_refused_with_a_clear_error(secure_stack: StackSettings) -> None:
    wrong = secure_stack.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    t0 = time.monotonic()
    with pytest.raises(KafkaRefused, match=r"refused SASL SCRAM-SHA-512 authentication of user 'driftline'") as exc:
        await start_producer(wrong)
    assert "invalid credentials" in str(exc.value)
    assert "not-the-password" not in str(exc.value)
    assert time.monotonic() - t0 < 30  # refused, not retried as an outage


async def test_an_untrusted_broker_certificate_is_refused_with_a_clear_error(secure_stack: StackSettings) -> None:
    # Without the stack's CA the client trusts only the system's CAs, which never signed the broker.
    untrusted = secure_stack.model_copy(update={"kafka_ssl_ca_file": None})
    with pytest.raises(KafkaRefused, match=r"broker's certificate is not trusted \(CA file: the system CAs\)"):
        await start_producer(untrusted)


async def test_the_loop_closes_over_sasl_ssl(secure_namespace: Namespace) -> None:
    namespace = secure_namespace
    env = namespace.env()
    assert env["DRIFTLINE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS"] == namespace.stack.kafka_bootstrap_servers
    async with running_services(namespace) as procs:
        config = ScenarioConfig(
            seed=11,
            warmup=700,
            before_drift=700,
            after_drift_max=4000,
            after_new_model=300,
            rate=250,
            timeout_s=600,
            ingestion_url=procs["ingestion"].url,
            training_url=procs["training"].url,
        )
        summary = await Scenario(namespace.stack, config, say=print).run()
    timeline = "\n".join(f"{t['t']}s {t['topic']} {t['what']}" for t in summary.timeline)
    # publish → features → predictions (accuracy is measured on them) → drift → retrain → serve.
    assert summary.closed, f"loop did not close over SASL_SSL: {summary.reason}\n{timeline}"
    assert summary.accuracy_before_drift is not None and summary.accuracy_before_drift > 0.9
    assert summary.events_to_detection is not None
    assert summary.first_version is not None and summary.new_version is not None
    assert summary.new_version > summary.first_version
    # Every service said it connected over SASL_SSL, and none logged the password.
    password = namespace.stack.kafka_sasl_password
    assert password is not None
    for proc in procs.values():
        text = proc.log_path.read_text()
        assert f"{namespace.stack.kafka_bootstrap_servers} over SASL_SSL as driftline (SCRAM-SHA-512)" in text, (
            proc.module
        )
        assert password.get_secret_value() not in text, proc.module
