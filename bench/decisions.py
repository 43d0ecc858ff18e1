"""The contact decision's own cost: a campaign planner calls it once per recipient, so 1,000,000
recipients must fit in a few seconds beside the reads and writes of the plan.

uv run --frozen python -m bench.decisions [--decisions 1000000]

Recipients are a mix the planner meets: consent confirmed or not, quiet hours in several zones,
caps with a recent send, a do-not-contact entry, a detractor hold. Reported as CPU time per
decision (process time, so that other processes on a shared machine count less).
"""

from __future__ import annotations

import argparse
import time as clock
from datetime import UTC, datetime, time, timedelta

from broadcast_service.decision import CustomerReach, contact_decision, reach_of
from broadcast_service.projection import (
    ChannelPreferences,
    ChannelSetup,
    Consent,
    DetractorHold,
    DoNotContact,
    QuietWindow,
    RecentSend,
)

AT = datetime(2024, 5, 1, 20, 30, tzinfo=UTC)
ZONES = ("Europe/London", "America/New_York", "Asia/Tokyo", "Europe/Berlin")


def recipient(n: int) -> tuple[CustomerReach, list[RecentSend]]:
    """The n-th kind of recipient (a few hundred distinct kinds, cycled)."""
    customer = f"C{n}"
    window = QuietWindow(time(22, 0), time(7, 0), ZONES[n % len(ZONES)])
    setups = (
        ChannelSetup("email", "a@example.com", window, 3 if n % 3 else None, 10, None),
        ChannelSetup("sms", "+44" if n % 5 else None, window, 1, None, None),
    )
    preferences = ChannelPreferences(customer, setups, window.timezone, AT, "bench", customer)
    capture = "double_opt_in" if n % 4 else "web_form"
    consents = [Consent(customer, "marketing", "*", "granted", AT, "bench", customer, capture)]
    listed = [DoNotContact(customer, "sms", True, "unsubscribed", None, AT, "b", customer)]
    detractor = DetractorHold(customer, "nps", 3, AT - timedelta(days=5), "b", customer)
    reach = reach_of(
        preferences,
        consents,
        listed if n % 7 == 0 else (),
        (),
        detractor if n % 11 == 0 else None,
    )
    sends = [RecentSend("email", "service", AT - timedelta(hours=n % 30))] if n % 2 else []
    return reach, sends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    args = parser.parse_args()
    kinds = [recipient(n) for n in range(770)]
    started = clock.process_time()
    contacted = 0
    for n in range(args.decisions):
        reach, sends = kinds[n % len(kinds)]
        contacted += contact_decision(reach, sends, "marketing", AT).contact
    spent = clock.process_time() - started
    print(
        f"{args.decisions} decisions in {spent:.2f} s CPU "
        f"({spent / args.decisions * 1e6:.2f} µs each), {contacted} contact now"
    )


if __name__ == "__main__":
    main()
