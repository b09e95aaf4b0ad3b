"""Gift catalogue and spending limits that hosts set per deployment (kept free of heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gift:
    """A gift in the catalogue: its price in coins and its animation tier (1 small to 3 full screen)."""

    id: str
    name: str
    coins: int
    tier: int


@dataclass(frozen=True)
class CoinPack:
    """Coins sold for an amount in minor units of a currency (cents for ``usd``)."""

    id: str
    coins: int
    amount_minor: int
    currency: str


DEFAULT_PACKS = (
    CoinPack("coins-100", 100, 99, "usd"),
    CoinPack("coins-550", 550, 499, "usd"),
    CoinPack("coins-1200", 1200, 999, "usd"),
)


@dataclass(frozen=True)
class MessageTier:
    """A paid highlighted message's tier (Super Chat): from ``min_coins`` on, shown in ``colour``, pinned
    for ``pin_s`` seconds, with up to ``max_chars`` characters."""

    level: int
    min_coins: int
    colour: str
    pin_s: int
    max_chars: int


DEFAULT_TIERS = (
    MessageTier(1, 10, "blue", 0, 50),
    MessageTier(2, 50, "green", 30, 150),
    MessageTier(3, 200, "orange", 120, 270),
    MessageTier(4, 1000, "red", 300, 350),
)

DEFAULT_CATALOGUE = (
    Gift("heart", "Heart", 1, 1),
    Gift("coffee", "Coffee", 10, 1),
    Gift("star", "Star", 50, 2),
    Gift("trophy", "Trophy", 200, 2),
    Gift("rocket", "Rocket", 1000, 3),
)


@dataclass(frozen=True)
class GiftPolicy:
    """Gifts, the teacher's share of what students pay, and the platform's spending caps (a user may
    set lower ones)."""

    catalogue: tuple[Gift, ...] = DEFAULT_CATALOGUE
    packs: tuple[CoinPack, ...] = DEFAULT_PACKS
    tiers: tuple[MessageTier, ...] = DEFAULT_TIERS
    #: Repeated gifts of one kind from one user this close together are announced as one combo.
    combo_window_ms: int = 3000
    #: Share of gifts, tips and paid questions that goes to the teacher, in basis points (70%).
    teacher_share_bp: int = 7000
    per_transfer_cap: int = 10_000
    daily_cap: int = 50_000
    #: Most gifts of one kind in one send.
    max_count: int = 99
    #: Coins of a paid question left unanswered go back after this long, if the room was never ended.
    hold_ttl_s: int = 6 * 3600

    def tier(self, coins: int) -> MessageTier | None:
        """The highest tier ``coins`` reach, if any."""
        reached = [t for t in self.tiers if coins >= t.min_coins]
        return max(reached, key=lambda t: t.min_coins) if reached else None

    def gift(self, gift_id: str) -> Gift | None:
        return next((g for g in self.catalogue if g.id == gift_id), None)


@dataclass(frozen=True)
class SalesPolicy:
    """In-stream course sales: how wallet coins pay for prices in a currency, how long an unpaid order
    holds its seat, the teacher's share, the default refund policy, and where host webhooks go."""

    #: Coins per minor unit of each currency a wallet may pay in (``usd`` 1: one coin pays one cent).
    coins_per_minor: tuple[tuple[str, int], ...] = (("usd", 1), ("eur", 1))
    #: An unpaid (checkout) order holds its seat this long, then expires and gives it back.
    order_hold_s: int = 600
    teacher_share_bp: int = 7000
    refund_days: int = 7
    refund_max_consumed_pct: int = 20
    host_webhook_url: str | None = None
    host_webhook_secret: str = ""

    def coin_rate(self, currency: str) -> int | None:
        return next((rate for code, rate in self.coins_per_minor if code == currency), None)
