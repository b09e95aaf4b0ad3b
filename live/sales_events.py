"""Course sales over the room's Socket.IO connection: thin handlers over the sales, coupon and order
services (docs/protocol.md, "Sales")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gifting.catalogue import Catalogue
from gifting.coupons import CouponService
from gifting.orders import BuyRequest, OrderService
from gifting.sales import SalesService
from gifting.schemas import (
    BuyIn,
    CouponCreateIn,
    CouponIdIn,
    OrdersListIn,
    RefundIn,
    SalesGetIn,
    SalesPinIn,
    SaleStartIn,
)
from rooms.errors import RoomError
from rooms.presence import PresenceKeeper
from rooms.schemas import EmptyIn
from rooms.service import Room
from rooms.views import RoomViews

if TYPE_CHECKING:
    from live.gateway import Session

#: The name of the sales part of each room view (rooms/views.py).
VIEW_PART = "sales"


@dataclass
class SalesServices:
    catalogue: Catalogue
    sales: SalesService
    coupons: CouponService
    orders: OrderService


class SalesEvents:
    """The sales events of one app's gateway."""

    def __init__(self, services: SalesServices, views: RoomViews, presence: PresenceKeeper) -> None:
        self.s = services
        self.views = views
        self.presence = presence

    def events(self) -> dict[str, tuple[type[Any], Callable[[Session, Any], Awaitable[dict[str, Any]]], bool]]:
        return {
            "sales:get": (SalesGetIn, self.get, True),
            "sales:pin": (SalesPinIn, self.pin, True),
            "sales:unpin": (EmptyIn, self.unpin, True),
            "sales:start": (SaleStartIn, self.start, True),
            "sales:stop": (EmptyIn, self.stop, True),
            "coupon:create": (CouponCreateIn, self.create_coupon, True),
            "coupon:stop": (CouponIdIn, self.stop_coupon, True),
            "coupon:claim": (CouponIdIn, self.claim, True),
            "course:buy": (BuyIn, self.buy, True),
            "order:refund": (RefundIn, self.refund, True),
            "orders:list": (OrdersListIn, self.list_orders, True),
        }

    def _room(self, room_id: str) -> tuple[Room, dict[str, Any] | None]:
        view = self.views.get(room_id)
        if view is None:
            raise RoomError("unavailable", "the room is loading; try again")
        return view.room, view.parts.get(VIEW_PART)

    async def get(self, session: Session, _: SalesGetIn) -> dict[str, Any]:
        who = session.identity
        room, card = self._room(who.room_id)
        answer: dict[str, Any] = {"state": card, "coin_rates": dict(self.s.orders.policy.coins_per_minor)}
        if who.is_staff:
            answer["courses"] = [c.card() for c in await self.s.catalogue.list(room.id)]
        else:
            answer["claims"] = await self.s.coupons.claims_of(who.user_id, room.id)
        return answer

    async def pin(self, session: Session, msg: SalesPinIn) -> dict[str, Any]:
        who = session.identity
        room, _ = self._room(who.room_id)
        audience = await self.presence.count(room.id)
        return {"state": await self.s.sales.pin(who, room, msg.course_id, audience)}

    async def unpin(self, session: Session, msg: EmptyIn) -> dict[str, Any]:
        who = session.identity
        room, _ = self._room(who.room_id)
        return {"state": await self.s.sales.unpin(who, room)}

    async def start(self, session: Session, msg: SaleStartIn) -> dict[str, Any]:
        who = session.identity
        room, _ = self._room(who.room_id)
        state = await self.s.sales.start_sale(
            who,
            room,
            price_minor=msg.price_minor,
            countdown_s=msg.countdown_s,
            duration_s=msg.duration_s,
            seats=msg.seats,
            per_student_limit=msg.per_student_limit,
            starts_at=msg.starts_at,
        )
        return {"state": state}

    async def stop(self, session: Session, msg: EmptyIn) -> dict[str, Any]:
        who = session.identity
        room, _ = self._room(who.room_id)
        return {"state": await self.s.sales.stop_sale(who, room)}

    async def create_coupon(self, session: Session, msg: CouponCreateIn) -> dict[str, Any]:
        who = session.identity
        room, _ = self._room(who.room_id)
        coupon = await self.s.coupons.create(who, room, **msg.model_dump())
        await self.s.sales.announce(room.id)
        return {"coupon": coupon}

    async def stop_coupon(self, session: Session, msg: CouponIdIn) -> dict[str, Any]:
        who = session.identity
        room, _ = self._room(who.room_id)
        await self.s.coupons.stop(who, room, msg.id)
        await self.s.sales.announce(room.id)
        return {}

    async def claim(self, session: Session, msg: CouponIdIn) -> dict[str, Any]:
        who = session.identity
        room, _ = self._room(who.room_id)
        answer = await self.s.coupons.claim(who, room, msg.id)
        self.s.sales.claims_changed(room.id)
        return answer

    async def buy(self, session: Session, msg: BuyIn) -> dict[str, Any]:
        who = session.identity
        room, card = self._room(who.room_id)
        request = BuyRequest(msg.course_id, msg.method, msg.key, msg.coupon_id, msg.accept_refund_policy)
        return await self.s.orders.buy(who, room, request, card)

    async def refund(self, session: Session, msg: RefundIn) -> dict[str, Any]:
        return await self.s.orders.refund(session.identity, msg.order_id, msg.amount_minor, msg.reason, msg.key)

    async def list_orders(self, session: Session, _: OrdersListIn) -> dict[str, Any]:
        who = session.identity
        if who.is_staff:
            return {"orders": await self.s.orders.list(room_id=who.room_id, limit=500)}
        return {"orders": await self.s.orders.list(room_id=who.room_id, buyer=who.user_id, limit=100)}
