"""Re-drive dead letters: see what failed, and publish the chosen records again once it is fixed.

    python -m crm_shared.ops.redrive list [filters] [--json]
    python -m crm_shared.ops.redrive publish (filters | --all) [--dry-run] [--json]

Filters: --reason SUBSTRING, --consumer NAME, --type TYPE, --topic ORIGIN, --since ISO-TIME.
The dead-letter topic is read from the beginning up to the end offsets seen at start, with no
consumer group. A record goes back to its original topic with its original bytes, so its id is
unchanged and a consumer that applied it already drops the copy; a record that several consumers
dead-lettered is sent once. Letters and records go to stdout; progress and the summary to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from crm_shared.contracts import deadletter
from crm_shared.contracts.events import CloudEvent
from crm_shared.contracts.topics import DEAD_LETTER, EVENT_TOPICS, TOPIC_OF_TYPE, topic_for
from crm_shared.runtime.config import DEFAULT_DEDUP_WINDOW_DAYS, PlatformSettings

UNKNOWN_TYPE = "unknown"
EVENT_TOPIC_NAMES = frozenset(topic.name for topic in EVENT_TOPICS)
MAX_RECORD_BYTES = 9 * 1024 * 1024
"""Dead letters may be up to 8 MiB (the dead-letter topic's limit), plus headers."""


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead-letter record: its headers read, and its value looked into when it is an event."""

    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes
    reason: str
    consumer: str
    origin_topic: str
    """As recorded; "" when the letter does not say (a record that failed in the database)."""
    origin_partition: int
    origin_offset: int
    failed_at: datetime
    type: str
    source: str | None
    id: str | None
    subject: str | None

    @property
    def redrive_topic(self) -> str | None:
        """The event topic the record belongs on: its recorded origin, else its type's topic."""
        if self.origin_topic in EVENT_TOPIC_NAMES:
            return self.origin_topic
        if not self.origin_topic and self.type in TOPIC_OF_TYPE:
            return topic_for(self.type)
        return None

    @property
    def origin(self) -> str:
        """The topic to show and filter on: where the record came from, derived when unrecorded."""
        return self.redrive_topic or self.origin_topic


def letter_from(
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
) -> Letter:
    """Read one record of the dead-letter topic; tolerant of missing or malformed headers."""
    found = deadletter.read_headers(headers)
    raw = value or b""
    try:
        envelope: CloudEvent | None = CloudEvent.model_validate_json(raw)
    except ValidationError:
        envelope = None
    return Letter(
        dlq_partition=partition,
        dlq_offset=offset,
        key=key,
        value=raw,
        reason=found.get(deadletter.REASON, ""),
        consumer=found.get(deadletter.CONSUMER, ""),
        origin_topic=found.get(deadletter.ORIGIN_TOPIC, ""),
        origin_partition=_int(found.get(deadletter.ORIGIN_PARTITION)),
        origin_offset=_int(found.get(deadletter.ORIGIN_OFFSET)),
        failed_at=_failed_at(found.get(deadletter.FAILED_AT), timestamp_ms),
        type=envelope.type if envelope else UNKNOWN_TYPE,
        source=envelope.source if envelope else None,
        id=envelope.id if envelope else None,
        subject=envelope.subject if envelope else None,
    )


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1


def _failed_at(text: str | None, timestamp_ms: int) -> datetime:
    """The failure time the letter states, else when it reached the dead-letter topic."""
    if text:
        try:
            return aware(datetime.fromisoformat(text))
        except ValueError:
            pass
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


def aware(moment: datetime) -> datetime:
    """A time without an offset is taken as UTC, so that times always compare."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Filters:
    """Which letters an operator means; an empty filter means every letter."""

    reason: str | None = None
    consumer: str | None = None
    type: str | None = None
    topic: str | None = None
    since: datetime | None = None

    def any(self) -> bool:
        chosen = (self.reason, self.consumer, self.type, self.topic, self.since)
        return any(value is not None for value in chosen)

    def matches(self, letter: Letter) -> bool:
        """Reason by substring (case-insensitive); consumer, type and topic exactly."""
        return (
            (self.reason is None or self.reason.casefold() in letter.reason.casefold())
            and (self.consumer is None or self.consumer == letter.consumer)
            and (self.type is None or self.type == letter.type)
            and (self.topic is None or self.topic == letter.origin)
            and (self.since is None or letter.failed_at >= self.since)
        )


def select(letters: Iterable[Letter], filters: Filters) -> Iterator[Letter]:
    return (letter for letter in letters if filters.matches(letter))


@dataclass(frozen=True, slots=True, order=True)
class Group:
    reason: str
    consumer: str
    type: str


def headline(reason: str) -> str:
    """A reason's first line: a database error goes on with a DETAIL line naming the row."""
    return reason.strip().split("\n", 1)[0]


def group_letters(letters: Iterable[Letter]) -> list[tuple[Group, int]]:
    """Counts per (reason's headline, consumer, type), largest first, then by name."""
    counts = Counter(
        Group(headline(letter.reason), letter.consumer, letter.type) for letter in letters
    )
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def record_identity(letter: Letter) -> tuple[object, ...]:
    """What makes letters copies of one record: its place in the origin topic, else its event id.

    Each consumer that refuses a record writes its own letter, so one record can have several.
    """
    if letter.origin_topic and letter.origin_partition >= 0 and letter.origin_offset >= 0:
        return ("record", letter.origin_topic, letter.origin_partition, letter.origin_offset)
    if letter.id is not None:
        return ("event", letter.redrive_topic, letter.source, letter.id)
    return ("letter", letter.dlq_partition, letter.dlq_offset)


@dataclass(frozen=True, slots=True)
class Redrive:
    """One record to publish again: the first of its letters, where it goes, how many it covers."""

    letter: Letter
    topic: str
    letters: int = 1

    @property
    def key(self) -> bytes | None:
        """Keyed by the customer (the event's subject), else by the key the record had."""
        return self.letter.subject.encode() if self.letter.subject else self.letter.key

    @property
    def partition(self) -> int | None:
        """The record's own partition when the letter says, so it stays with its neighbours."""
        return self.letter.origin_partition if self.letter.origin_partition >= 0 else None


@dataclass
class Plan:
    sends: list[Redrive] = field(default_factory=list)
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def plan_redrive(letters: Iterable[Letter], *, window_start: datetime | None = None) -> Plan:
    """The records to publish again, once each, in dead-letter order.

    Letters that cannot go anywhere are skipped with the reason. So are letters older than
    window_start (the deduplication window): a consumer that applied such a record may have
    forgotten its id, and would apply the copy a second time.
    """
    plan = Plan()
    index: dict[tuple[object, ...], int] = {}
    for letter in letters:
        topic = letter.redrive_topic
        if topic is None:
            plan.skipped[_unroutable(letter)] += 1
            continue
        if window_start is not None and letter.failed_at < window_start:
            plan.skipped["dead-lettered before the deduplication window (see --past-window)"] += 1
            continue
        identity = record_identity(letter)
        if identity in index:
            position = index[identity]
            first = plan.sends[position]
            plan.sends[position] = Redrive(first.letter, first.topic, first.letters + 1)
            plan.duplicates += 1
            continue
        index[identity] = len(plan.sends)
        plan.sends.append(Redrive(letter, topic))
    return plan


def _unroutable(letter: Letter) -> str:
    if letter.origin_topic:
        return f"origin {letter.origin_topic!r} is not an event topic"
    return "no origin topic and no known event type"


def letter_json(letter: Letter) -> dict[str, Any]:
    """One letter as the --json listing prints it."""
    return {
        "origin": {
            "topic": letter.origin or None,
            "partition": letter.origin_partition if letter.origin_partition >= 0 else None,
            "offset": letter.origin_offset if letter.origin_offset >= 0 else None,
        },
        "deadletter": {"partition": letter.dlq_partition, "offset": letter.dlq_offset},
        "reason": letter.reason,
        "consumer": letter.consumer,
        "type": letter.type,
        "source": letter.source,
        "id": letter.id,
        "subject": letter.subject,
        "failed_at": letter.failed_at.isoformat(),
    }


def redrive_json(redrive: Redrive, sent_to: tuple[int, int] | None = None) -> dict[str, Any]:
    """One record to publish (or published, with the partition and offset it got)."""
    letter = redrive.letter
    line: dict[str, Any] = {
        "topic": redrive.topic,
        "key": _text(redrive.key),
        "type": letter.type,
        "source": letter.source,
        "id": letter.id,
        "letters": redrive.letters,
    }
    if sent_to is not None:
        line["partition"], line["offset"] = sent_to
    return line


def _text(key: bytes | None) -> str | None:
    return key.decode(errors="replace") if key is not None else None


def describe_skipped(skipped: Counter[str]) -> str:
    return "; ".join(f"{count} {why}" for why, count in sorted(skipped.items()))


class Progress:
    """Tells stderr how far a long run is, at most every `every` seconds."""

    def __init__(self, verb: str, total: int, every: float = 2.0) -> None:
        self.verb, self.total, self.every = verb, total, every
        self.done = 0
        self._last = time.monotonic()

    def step(self, count: int = 1) -> None:
        self.done += count
        if time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            print(f"{self.verb} {self.done:,}/{self.total:,}", file=sys.stderr, flush=True)


def read_letters(bootstrap: str, stall_seconds: float = 60) -> Iterator[Letter]:
    """Every letter on the dead-letter topic up to the end offsets read at start."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:
        numbers = consumer.partitions_for_topic(DEAD_LETTER.name)
        if not numbers:
            raise SystemExit(
                f"topic {DEAD_LETTER.name} not found: run python -m crm_shared.ops.bootstrap"
            )
        partitions = [TopicPartition(DEAD_LETTER.name, n) for n in sorted(numbers)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        starts = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        pending = {tp for tp in partitions if ends[tp] > starts[tp]}
        progress = Progress("read", sum(ends[tp] - starts[tp] for tp in pending))
        deadline = time.monotonic() + stall_seconds
        while pending:
            fetched = consumer.poll(timeout_ms=1000)
            for tp, records in fetched.items():
                for record in records:
                    if record.offset < ends[tp]:
                        progress.step()
                        yield letter_from(
                            record.partition,
                            record.offset,
                            record.timestamp,
                            record.key,
                            record.value,
                            record.headers,
                        )
            finished = {tp for tp in pending if consumer.position(tp) >= ends[tp]}
            if finished:
                consumer.pause(*finished)
                pending -= finished
            if fetched or finished:
                deadline = time.monotonic() + stall_seconds
            elif time.monotonic() > deadline:
                raise SystemExit(f"no progress reading {DEAD_LETTER.name} for {stall_seconds:g} s")
    finally:
        consumer.close()


def publish(bootstrap: str, sends: Sequence[Redrive]) -> list[tuple[Redrive, Any]]:
    """Publish the records with acks=all and idempotence; each with its metadata or its error."""
    if not sends:
        return []
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="crm-redrive",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=MAX_RECORD_BYTES,
    )
    progress = Progress("sent", len(sends))
    outcomes: list[Any] = []
    try:
        for redrive in sends:
            try:
                outcomes.append(
                    producer.send(
                        redrive.topic,
                        key=redrive.key,
                        value=redrive.letter.value,
                        partition=redrive.partition,
                        headers=[(deadletter.REDRIVEN_FROM, _dead_letter_position(redrive))],
                    )
                )
            except KafkaError as refused:  # e.g. too large: report it, send the others
                outcomes.append(refused)
            progress.step()
        producer.flush()
    finally:
        producer.close()
    return [(redrive, _outcome(sent)) for redrive, sent in zip(sends, outcomes, strict=True)]


def _outcome(sent: Any) -> Any:
    """The record's metadata once on the broker, else the error that kept it off."""
    if isinstance(sent, KafkaError):
        return sent
    return sent.value if sent.succeeded() else sent.exception


def _dead_letter_position(redrive: Redrive) -> bytes:
    """Where the copy came from, for whoever inspects the topic later."""
    return f"{DEAD_LETTER.name}/{redrive.letter.dlq_partition}/{redrive.letter.dlq_offset}".encode()


def _list(letters: Iterable[Letter], as_json: bool) -> None:
    if as_json:
        for letter in letters:
            print(json.dumps(letter_json(letter)))
        return
    groups = group_letters(letters)
    print(f"{'letters':>7}  {'consumer':<16}  {'type':<32}  reason")
    for group, count in groups:
        print(f"{count:>7}  {group.consumer:<16}  {group.type:<32}  {group.reason}")
    total = sum(count for _, count in groups)
    print(f"{total} letters in {len(groups)} groups", file=sys.stderr)


def _publish(bootstrap: str, plan: Plan, *, dry_run: bool, as_json: bool) -> int:
    results: list[tuple[Redrive, Any]] = (
        [(redrive, None) for redrive in plan.sends] if dry_run else publish(bootstrap, plan.sends)
    )
    failed = 0
    for redrive, outcome in results:
        if isinstance(outcome, BaseException):
            failed += 1
            print(f"failed: {redrive.topic} id={redrive.letter.id}: {outcome!r}", file=sys.stderr)
            continue
        sent_to = (outcome.partition, outcome.offset) if outcome is not None else None
        if as_json:
            print(json.dumps(redrive_json(redrive, sent_to)))
        else:
            where = f"{redrive.topic}[{sent_to[0]}]@{sent_to[1]}" if sent_to else redrive.topic
            print(
                f"{where}  key={_text(redrive.key)}  type={redrive.letter.type}"
                f"  id={redrive.letter.id}  letters={redrive.letters}"
            )
    verb = "would re-publish" if dry_run else "re-published"
    summary = (
        f"{verb} {len(plan.sends) - failed} records from {len(plan.sends) + plan.duplicates} "
        f"letters (the other {plan.duplicates} named a record already chosen)"
    )
    if plan.skipped:
        summary += f"; skipped {describe_skipped(plan.skipped)}"
    if failed:
        summary += f"; {failed} FAILED"
    print(summary, file=sys.stderr)
    return 1 if failed else 0


def _since(text: str) -> datetime:
    try:
        return aware(datetime.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; `publish` without any filter is refused unless --all says so."""
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--reason", help="reason contains this text (case-insensitive)")
    filters.add_argument("--consumer", help="the consumer that refused it, e.g. profile")
    filters.add_argument("--type", help=f"event type, or '{UNKNOWN_TYPE}' for undecodable ones")
    filters.add_argument("--topic", help="origin topic (derived from the type when unrecorded)")
    filters.add_argument("--since", type=_since, help="dead-lettered at or after this ISO time")
    filters.add_argument("--json", action="store_true", help="one JSON object per line")
    filters.add_argument("--bootstrap", default=PlatformSettings().kafka_bootstrap)
    parser = argparse.ArgumentParser(prog="python -m crm_shared.ops.redrive", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[filters], help="letters grouped by reason, consumer, type")
    publish_ = commands.add_parser(
        "publish", parents=[filters], help="publish the chosen records to their topics again"
    )
    publish_.add_argument("--all", action="store_true", help="every letter (no filter needed)")
    publish_.add_argument("--dry-run", action="store_true", help="show what would be sent")
    publish_.add_argument(
        "--window-days",
        type=float,
        default=DEFAULT_DEDUP_WINDOW_DAYS,
        help="the consumers' deduplication window (dedup_window_days)",
    )
    publish_.add_argument(
        "--past-window",
        action="store_true",
        help="also send letters older than the window (consumers may apply them twice)",
    )
    args = parser.parse_args(argv)
    args.filters = Filters(args.reason, args.consumer, args.type, args.topic, args.since)
    if args.command == "publish" and not (args.all or args.filters.any()):
        publish_.error("choose letters with at least one filter, or say --all")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        letters = select(read_letters(args.bootstrap), args.filters)
        if args.command == "list":
            _list(letters, args.json)
            return 0
        now = datetime.now(UTC)
        window_start = None if args.past_window else now - timedelta(days=args.window_days)
        plan = plan_redrive(letters, window_start=window_start)
        return _publish(args.bootstrap, plan, dry_run=args.dry_run, as_json=args.json)
    except KafkaError as error:
        raise SystemExit(f"redrive failed: {error!r}") from error


if __name__ == "__main__":
    sys.exit(main())
