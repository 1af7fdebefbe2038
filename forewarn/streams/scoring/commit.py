"""Publishing a batch and committing its offsets: the one place the transaction protocol lives.

Exactly-once (the default), per batch:

1. begin a transaction;
2. produce the batch's records (actions, decisions, dead letters, one changelog record per
   changed customer);
3. send the consumed offsets to the transaction;
4. commit it.

At-least-once: produce, flush, then commit the offsets.

The outcome is ``True`` (committed) or ``False`` (aborted: nothing of the batch is visible to
``read_committed`` readers, and the caller discards the batch's state and calls ``reading.rewind``).
Every Kafka call is bounded (``CALL_TIMEOUT_SECONDS``) so the loop stays live and a stop
request is heard; a broker that does not answer in time is asked again, for as long as it
takes, and each retry is counted. Errors sort into four kinds (``classify``):

- *retry*: ask again (a stalled broker);
- *abort*: abort the transaction (itself retried until the broker answers), roll back;
- *fenced*: another worker took this transactional id: ``WorkerFenced``, whichever step
  it surfaces in (``forewarn score`` exits 3);
- *fatal*: this producer is unusable: ``ProducerFailed``, and the worker replaces it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from forewarn.errors import ForewarnError
from forewarn.pipeline.codecs import RawRecord
from forewarn.streams.http import Health
from forewarn.streams.metrics import ScoringMetrics
from forewarn.streams.scoring.outputs import Limits, OutputRecord
from forewarn.streams.settings import Role, Settings, kafka_config

log = logging.getLogger("forewarn.score")

#: the longest any one Kafka call blocks the loop (well below the liveness timeout)
CALL_TIMEOUT_SECONDS = 10.0
#: how often a retrying call says so in the log
_RETRY_LOG_SECONDS = 30.0
#: how long one transactional call may take before the producer is given up. Every call is
#: given CALL_TIMEOUT_SECONDS and returns within it while librdkafka honours it (a stalled
#: broker's request that times out after 60 s surfaces across several such calls), so three
#: times that is stuck: librdkafka 2.16's send_offsets_to_transaction never returned, timeout
#: or not, once the embedded broker had failed the transaction (a broker stall, a restart).
#: It was 75 s; in the 90 s stall drill that wait alone nearly used up the recovery bound.
STUCK_SECONDS = 3 * CALL_TIMEOUT_SECONDS
#: how long an abort is retried before the producer is replaced instead (a new producer's
#: init_transactions aborts what the old one left open; some brokers never answer the
#: epoch bump an abort after timed-out messages needs, the embedded one among them)
ABORT_PATIENCE_SECONDS = 30.0

ErrorKind = Literal["retry", "abort", "fenced", "fatal"]
_FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)


class WorkerFenced(ForewarnError, RuntimeError):
    """Another worker started with this worker's transactional id and took over."""

    exit_code = 3


class ProducerFailed(ForewarnError, RuntimeError):
    """The producer hit a fatal error (not fencing): it must be replaced."""

    exit_code = 1


class BrokerUnreachable(ForewarnError, RuntimeError):
    """Kafka did not answer at start within ``FOREWARN_STARTUP_TIMEOUT_SECONDS``."""

    exit_code = 1


def classify(err: KafkaError) -> ErrorKind:
    """What to do about an error from a transactional call (librdkafka's own flags)."""
    if err.code() in _FENCED:
        return "fenced"
    if err.fatal():
        return "fatal"
    if err.txn_requires_abort():
        return "abort"
    if err.retriable() or err.code() == KafkaError._TIMED_OUT:
        return "retry"
    return "abort"


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The Kafka error behind ``exc``, if any.

    When the producer has a fatal error (fencing), confluent-kafka's ``flush`` and ``poll``
    raise it and still run delivery callbacks, whose first call into the library then
    surfaces as a ``SystemError`` caused by the ``KafkaException``.
    """
    while exc is not None:
        if isinstance(exc, KafkaException):
            err: KafkaError = exc.args[0]
            return err
        if not isinstance(exc, SystemError):
            return None
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


class _Failure(Exception):
    def __init__(self, kind: ErrorKind, why: str) -> None:
        super().__init__(why)
        self.kind = kind


def next_offsets(records: list[RawRecord]) -> list[TopicPartition]:
    """The offsets to commit after ``records``: one past the last of each partition."""
    last: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset >= last.get(key, -1):
            last[key] = r.offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


class Committer:
    """Owns the producer and runs each batch's transaction (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        health: Health,
        metrics: ScoringMetrics,
        stop: threading.Event,
        limits: Limits,
    ) -> None:
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.stop = stop
        self.limits = limits
        self.producer: Producer | None = None
        #: changelog partition -> offset after the last state record delivered
        self.changelog_next: dict[int, int] = {}
        self.batches = 0
        self._failed: list[str] = []
        self._retry_logged: dict[str, float] = {}
        #: the producer's fatal error, as librdkafka reported it (fencing among them)
        self._fatal: KafkaError | None = None

    # -- the producer's life --

    def start(self, deadline: float | None = None) -> bool:
        """A new producer, its transactions initialised (which fences an earlier incarnation
        and aborts what it left open). False when stopped first; ``BrokerUnreachable`` when
        ``deadline`` (monotonic) passes."""
        s = self.settings
        self._fatal = None
        role: Role = "transactional_producer" if s.exactly_once else "producer"
        self.producer = Producer(kafka_config(s, role, error_cb=self._on_error))
        if not s.exactly_once:
            return True
        producer = self.producer
        while not self.stop.is_set():
            try:
                producer.init_transactions(2.0)  # short slices: Ctrl-C is heard at once
                return True
            except KafkaException as e:
                err: KafkaError = e.args[0]
                kind = classify(err)
                if kind == "fenced":
                    raise WorkerFenced(self._fenced_message()) from e
                if kind != "retry":  # e.g. not authorised for this transactional id
                    raise ProducerFailed(f"init_transactions: {err}") from e
                if deadline is not None and time.monotonic() >= deadline:
                    raise BrokerUnreachable(
                        f"cannot reach Kafka at {s.bootstrap_servers} "
                        "(FOREWARN_BOOTSTRAP_SERVERS) within "
                        f"{s.startup_timeout_seconds:g} s; is the broker running?"
                    ) from e
                self._retrying("init_transactions", err)
        return False

    def restart(self, why: str) -> bool:
        """Replace a producer that cannot go on; False when stopped while waiting."""
        log.warning("replacing the producer (%s)", why)
        self.metrics.producer_restarts.inc()
        self.close(0)
        return self.start()

    def close(self, timeout: float = 10.0) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.flush(timeout)
            except (KafkaException, SystemError) as e:  # a fenced or failed producer
                log.info("closing the producer: %s", kafka_error(e) or e)

    # -- one batch --

    def commit(self, consumer: Consumer, records: list[RawRecord], out: list[OutputRecord]) -> bool:
        """Publish ``out`` and commit the offsets after ``records``; False when aborted."""
        self._failed.clear()
        try:
            if self.settings.exactly_once:
                if not self._transaction(consumer, next_offsets(records), out):
                    return False
            elif not self._at_least_once(consumer, next_offsets(records), out):
                return False
        except _Failure as f:
            if f.kind == "fenced":
                raise WorkerFenced(self._fenced_message()) from None
            if f.kind == "fatal":
                raise ProducerFailed(str(f)) from None
            if self.settings.exactly_once:
                self._abort(str(f))
            else:
                log.warning("batch not committed, it is read again: %s", f)
            return False
        self.batches += 1
        if self.settings.exactly_once:
            self.metrics.transactions.labels("committed").inc()
        return True

    def _transaction(
        self, consumer: Consumer, offsets: list[TopicPartition], out: list[OutputRecord]
    ) -> bool:
        producer = self._producer()
        # 1. begin
        self._call("begin_transaction", lambda _t: producer.begin_transaction())
        # 2. produce, and wait for every record to be acknowledged: a transaction the broker
        #    already failed (a broker that came back empty does that) shows up here as
        #    delivery errors, whereas send_offsets_to_transaction would wait on it forever,
        #    whatever its timeout (librdkafka 2.16 against the embedded broker)
        self._produce(out)
        self._flush()
        if self._failed:
            raise _Failure("abort", f"{len(self._failed)} records not delivered: {self._failed[0]}")
        # 3. the consumed offsets go into the same transaction
        self._call(
            "send_offsets_to_transaction",
            lambda t: producer.send_offsets_to_transaction(
                offsets, consumer.consumer_group_metadata(), t
            ),
        )
        hang = self.settings.fault_hang_after_batches
        if hang is not None and self.batches >= hang:  # chaos drills only
            self._hang(out)
            self._abort("stopped while held")
            return False
        # 4. commit: outputs, state changelog and offsets become visible together
        self._call("commit_transaction", producer.commit_transaction)
        return True

    def _at_least_once(
        self, consumer: Consumer, offsets: list[TopicPartition], out: list[OutputRecord]
    ) -> bool:
        self._produce(out)
        self._flush()
        if self._failed:
            log.warning("%d records not delivered (%s); the batch is read again",
                        len(self._failed), self._failed[0])  # fmt: skip
            return False
        self._call(
            "commit_offsets", lambda _t: consumer.commit(offsets=offsets, asynchronous=False)
        )
        return True

    def _producer(self) -> Producer:
        if self.producer is None:
            raise ProducerFailed("no producer")
        return self.producer

    def _produce(self, out: list[OutputRecord]) -> None:
        producer = self._producer()
        for rec in out:
            # -1: by key (librdkafka's default partitioner); changelog records name theirs
            partition = -1 if rec.partition is None else rec.partition
            headers: list[tuple[str, str | bytes | None]] | None = (
                None if rec.headers is None else list(rec.headers)
            )
            while True:
                try:
                    producer.produce(rec.topic, rec.value, rec.key, partition,
                                     headers=headers, on_delivery=self._delivered)  # fmt: skip
                    break
                except BufferError:  # the local queue is full: let it drain
                    self.health.beat()
                    producer.poll(0.1)
                except KafkaException as e:
                    err: KafkaError = e.args[0]
                    if err.code() in _TOO_LARGE:  # not ours to judge after fitting: learn
                        self.limits.refused(rec.topic, len(rec.value or b""))
                    raise _Failure(self._kind(err), f"produce: {err}") from e
        self._wait(lambda: producer.poll(0), "poll")

    def _flush(self) -> None:
        producer = self._producer()
        while self._wait(lambda: producer.flush(CALL_TIMEOUT_SECONDS), "flush") > 0:
            self.health.beat()
            self.metrics.kafka_retries.labels("flush").inc()

    def _wait(self, fn: Callable[[], int], operation: str) -> int:
        """``poll`` or ``flush``, their Kafka errors (fencing above all) sorted by kind."""
        try:
            return fn()
        except (KafkaException, SystemError) as e:
            err = self._error_of(e)
            raise _Failure(self._kind(err), f"{operation}: {err}") from e

    def _error_of(self, e: KafkaException | SystemError) -> KafkaError:
        """The Kafka error behind ``e``.

        After a fatal error (fencing above all) confluent-kafka 2.16's ``flush`` raises a bare
        SystemError and never calls the error callback; the producer then answers any
        transactional call with the fatal error, so it is asked (``begin_transaction`` with a
        transaction open has no other effect).
        """
        err = kafka_error(e) or self._fatal
        if err is None and isinstance(e, SystemError) and self.producer is not None:
            try:
                self.producer.begin_transaction()
            except KafkaException as probe:
                found: KafkaError = probe.args[0]
                err = found if found.fatal() else None
        if err is None:
            raise e
        return err

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: remember a fatal error (librdkafka logs the rest)."""
        if err.fatal():
            self._fatal = err

    def _kind(self, err: KafkaError) -> ErrorKind:
        if self._fatal is not None and self._fatal.code() in _FENCED:
            return "fenced"
        return classify(err)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        # Called while a fatal error is pending, any call into the message raises; flush
        # reports the error itself. (try, not contextlib.suppress: this runs for every
        # record produced, and the context manager cost 0.4 µs each time)
        try:  # noqa: SIM105
            self._record_delivery(err, msg)
        except SystemError:
            pass

    def _record_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err.str()}")
            if err.code() in _TOO_LARGE:
                size = len(msg.value() or b"") + len(msg.key() or b"")
                self.limits.refused(msg.topic() or "", size)
                log.warning("%s refused a %d-byte record: keeping records smaller", msg.topic(),
                            size)  # fmt: skip
            return
        if msg.topic() == self.settings.topics.state:
            p, o = msg.partition() or 0, msg.offset() or 0
            if o + 1 > self.changelog_next.get(p, 0):
                self.changelog_next[p] = o + 1

    def _bounded(self, operation: str, fn: Callable[[float], object]) -> None:
        """``fn(CALL_TIMEOUT_SECONDS)`` on a thread of its own, waited for at most
        ``STUCK_SECONDS`` (the loop stays live meanwhile); ``ProducerFailed`` beyond that.

        A daemon thread: a call that never returns must not keep the process from exiting.
        The next producer's init_transactions fences the stuck one, which ends the call.
        """
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                fn(CALL_TIMEOUT_SECONDS)
                outcome.append(None)
            except BaseException as e:  # handed to the caller below
                outcome.append(e)

        thread = threading.Thread(target=call, name=f"forewarn-{operation}", daemon=True)
        thread.start()
        deadline = time.monotonic() + STUCK_SECONDS
        while thread.is_alive():
            thread.join(1.0)
            self.health.beat()
            if thread.is_alive() and time.monotonic() >= deadline:
                raise ProducerFailed(f"{operation} did not return within {STUCK_SECONDS:g} s")
        if outcome and outcome[0] is not None:
            raise outcome[0]

    def _call(self, operation: str, fn: Callable[[float], object]) -> None:
        """Run one transactional call, asking again while the broker does not answer."""
        while True:
            try:
                self._bounded(operation, fn)
                return
            except (KafkaException, SystemError) as e:
                err = self._error_of(e)
                kind = self._kind(err)
                if kind != "retry":
                    raise _Failure(kind, f"{operation}: {err}") from e
                if self.stop.is_set():  # stopping: the transaction is aborted instead
                    raise _Failure("abort", f"{operation}: {err}") from e
                self._retrying(operation, err)

    def _abort(self, why: str) -> None:
        """Abort the open transaction, asking again while the broker does not answer."""
        log.warning("aborting the batch's transaction: %s", why)
        producer = self._producer()
        give_up = time.monotonic() + ABORT_PATIENCE_SECONDS
        while True:
            try:
                self._bounded("abort_transaction", producer.abort_transaction)
                break
            except (KafkaException, SystemError) as e:
                err = self._error_of(e)
                kind = self._kind(err)
                if kind == "fenced":
                    raise WorkerFenced(self._fenced_message()) from e
                if kind != "retry" or time.monotonic() >= give_up:
                    raise ProducerFailed(f"abort_transaction: {err}") from e
                if self.stop.is_set():
                    # The next start with this instance id aborts it (init_transactions).
                    log.warning("stopping with the transaction still open: %s", err)
                    break
                self._retrying("abort_transaction", err)
        self.metrics.transactions.labels("aborted").inc()

    def _retrying(self, operation: str, err: KafkaError) -> None:
        self.health.beat()  # waiting for the broker is the loop turning, not a hang
        self.metrics.kafka_retries.labels(operation).inc()
        now = time.monotonic()
        if now - self._retry_logged.get(operation, -_RETRY_LOG_SECONDS) >= _RETRY_LOG_SECONDS:
            self._retry_logged[operation] = now
            log.warning("%s: no answer from Kafka yet, asking again (%s)", operation, err.str())

    def _hang(self, out: list[OutputRecord]) -> None:
        self._producer().flush(30)
        topics = self.settings.topics
        log.warning(
            "fault injection: holding the transaction of batch %d open (%d changelog records, "
            "%d decisions produced) until stopped",
            self.batches + 1,
            sum(r.topic == topics.state for r in out),
            sum(r.topic == topics.decisions for r in out),
        )
        self.stop.wait()

    def _fenced_message(self) -> str:
        return (
            f"fenced: another worker runs with transactional id "
            f"{self.settings.transactional_id!r} (give every worker its own "
            "FOREWARN_INSTANCE_ID); this one stops"
        )
