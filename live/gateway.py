"""Socket.IO gateway: authenticates connections, validates every inbound event, calls the room services,
and delivers room events to the sockets on this instance (it is the follower's ``LocalDelivery``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import socketio
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from gifting.gifts import GiftService
from gifting.payments import CheckoutService
from gifting.sales import SalesView
from gifting.schemas import BoardGetIn, CheckoutIn, GiftSendIn, LimitsIn, PaidMessageIn, TipSendIn, WalletGetIn
from live.auth import TokenError, verify_token
from live.config import Settings
from live.media.router import MediaRouter
from live.media_signalling import LARGE_EVENTS, MediaSignalling
from live.metrics import Metrics
from live.sales_events import VIEW_PART, SalesEvents, SalesServices
from live.sio_server import ACK_REQUESTED, PACKET_SIZE, ClassroomSocketServer
from rooms.audience import SKIP, Versions, versions, wire_for
from rooms.chat import ChatService
from rooms.engine import Engine, EngineUnavailable, Publication, now_ms
from rooms.errors import RoomError, unavailable
from rooms.follower import RoomFollower
from rooms.identity import Identity, Role
from rooms.presence import PresenceKeeper
from rooms.qa import QuestionService
from rooms.schemas import (
    ChatDeleteIn,
    ChatSendIn,
    EmptyIn,
    JoinIn,
    MemberRemoveIn,
    QaAnswerIn,
    QaAskIn,
    QaModerateIn,
    QaPinIn,
    QaSettingsIn,
    QaVoteIn,
)
from rooms.service import Room, RoomService
from rooms.views import RoomViews

log = logging.getLogger(__name__)


@dataclass
class Session:
    """One connection's verified identity, join state and event token bucket."""

    sid: str
    identity: Identity
    joined: bool = False
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    #: When this connection was last told it is rate limited (told at most once a second without an ack).
    told_limited: float = 0.0


Handler = Callable[[Session, Any], Awaitable[dict[str, Any]]]


def staff_room(room_id: str) -> str:
    """The Socket.IO room of a room's staff connections."""
    return f"{room_id}#staff"


def audience_room(room_id: str) -> str:
    """The Socket.IO room of a room's other connections."""
    return f"{room_id}#audience"


class SocketGateway:
    """One per app. Owns the per-connection sessions."""

    def __init__(
        self,
        settings: Settings,
        sio: ClassroomSocketServer,
        engine: Engine,
        rooms: RoomService,
        chat: ChatService,
        qa: QuestionService,
        gifts: GiftService,
        checkouts: CheckoutService,
        presence: PresenceKeeper,
        metrics: Metrics,
        router: MediaRouter,
        sales: SalesServices,
    ) -> None:
        self.settings = settings
        self.sio = sio
        self.engine = engine
        self.rooms = rooms
        self.chat = chat
        self.qa = qa
        self.gifts = gifts
        self.checkouts = checkouts
        self.presence = presence
        self.metrics = metrics
        self.router = router
        self.signalling = MediaSignalling(router, settings.ice_servers)
        self.follower = RoomFollower(engine, self, history_limit=settings.history_size)
        self.views = RoomViews(
            engine, rooms, chat, qa, history_limit=settings.history_size, parts={VIEW_PART: SalesView(sales.sales)}
        )
        self.sales = SalesEvents(sales, self.views, presence)
        self.sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._register()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # registration
    def _register(self) -> None:
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        events: dict[str, tuple[type[BaseModel], Handler, bool]] = {
            "join": (JoinIn, self._join, False),
            "chat:send": (ChatSendIn, self._chat_send, True),
            "chat:delete": (ChatDeleteIn, self._chat_delete, True),
            "member:remove": (MemberRemoveIn, self._member_remove, True),
            "room:go_live": (EmptyIn, self._go_live, True),
            "room:end": (EmptyIn, self._end, True),
            "qa:ask": (QaAskIn, self._qa_ask, True),
            "qa:vote": (QaVoteIn, self._qa_vote, True),
            "qa:moderate": (QaModerateIn, self._qa_moderate, True),
            "qa:answer": (QaAnswerIn, self._qa_answer, True),
            "qa:pin": (QaPinIn, self._qa_pin, True),
            "qa:settings": (QaSettingsIn, self._qa_settings, True),
            "gift:send": (GiftSendIn, self._gift_send, True),
            "tip:send": (TipSendIn, self._tip_send, True),
            "message:paid": (PaidMessageIn, self._paid_message, True),
            "wallet:get": (WalletGetIn, self._wallet_get, True),
            "wallet:checkout": (CheckoutIn, self._wallet_checkout, True),
            "wallet:limits": (LimitsIn, self._wallet_limits, True),
            "board:get": (BoardGetIn, self._board_get, True),
        }
        events.update(self.signalling.events())
        events.update(self.sales.events())
        self._known_events = set(events)
        for name, (schema, handler, needs_join) in events.items():
            limit = LARGE_EVENTS.get(name, self.settings.max_event_bytes)
            self.sio.on(name, self._guarded(name, schema, handler, needs_join, limit))
        self.sio.on("*", self.on_unknown)

    # connection lifecycle
    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            who = verify_token(self.settings.secret, token)
            await self.views.admit(who)
        except TokenError as exc:
            self._refuse_connect("unauthorized", str(exc))
        except RoomError as exc:
            self._refuse_connect(exc.code, exc.message)
        except (EngineUnavailable, SQLAlchemyError, OSError):
            log.exception("connect failed")
            self._refuse_connect("unavailable", "briefly unavailable, try again")
        self.sessions[sid] = Session(sid, who, tokens=float(self.settings.socket_event_burst))
        self.metrics.connections.inc()

    def _refuse_connect(self, code: str, message: str) -> None:
        self.metrics.connects_refused.labels(code).inc()
        raise socketio.exceptions.ConnectionRefusedError(message, {"code": code, "message": message})

    async def on_disconnect(self, sid: str, *_: Any) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        self.metrics.connections.dec()
        await self.signalling.disconnected(session)
        if session.joined:
            room_id = session.identity.room_id
            await self.presence.leave(sid, session.identity)
            if self.presence.local_count(room_id) == 0:
                await self.follower.unfollow(room_id)
                self.views.drop(room_id)
                self.metrics.rooms.set(len(list(self.follower.rooms)))

    async def on_unknown(self, event: str, sid: str, *_: Any) -> Any:
        self.metrics.events_in.labels("unknown").inc()
        session = self.sessions.get(sid)
        try:
            if session is not None:
                self._take_event_token(session)  # unknown events count against the limit like any other
        except RoomError as limited:
            return self._answer_error(sid, event, limited)
        return self._answer_error(sid, event, RoomError("unknown_event", f"no such event: {event[:64]}"))

    # inbound events: limits, validation and error mapping, then the handler
    def _guarded(
        self, event: str, schema: type[BaseModel], handler: Handler, needs_join: bool, max_bytes: int
    ) -> Callable[..., Awaitable[Any]]:
        received = self.metrics.events_in.labels(event)  # labels() is slow: looked up once

        async def guarded(sid: str, *args: Any) -> Any:
            received.inc()
            try:
                session = self.sessions.get(sid)
                if session is None:
                    raise RoomError("unauthorized", "not connected")
                self._take_event_token(session)
                payload = self._payload(args, max_bytes)
                try:
                    message = schema.model_validate(payload)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "payload"
                    raise RoomError("invalid", f"{where}: {first['msg']}") from None
                if needs_join and not session.joined:
                    raise RoomError("not_joined", "send 'join' first")
                return {"ok": True, **await handler(session, message)}
            except RoomError as exc:
                return self._answer_error(sid, event, exc)
            except EngineUnavailable:
                return self._answer_error(sid, event, unavailable())
            except (SQLAlchemyError, OSError):
                log.exception("%s failed", event)
                return self._answer_error(sid, event, unavailable())

        return guarded

    def _take_event_token(self, session: Session) -> None:
        now = time.monotonic()
        rate, burst = self.settings.socket_events_per_s, self.settings.socket_event_burst
        session.tokens = min(float(burst), session.tokens + (now - session.refilled) * rate)
        session.refilled = now
        if session.tokens < 1.0:
            raise RoomError(
                "rate_limited", "too many events", retry_after_ms=int((1.0 - session.tokens) / rate * 1000) + 1
            )
        session.tokens -= 1.0

    def _payload(self, args: tuple[Any, ...], max_bytes: int) -> Any:
        if len(args) != 1:
            raise RoomError("invalid", "send exactly one JSON object")
        payload = args[0]
        if PACKET_SIZE.get() > max_bytes:
            raise RoomError("too_large", f"event over {max_bytes} bytes")
        if not isinstance(payload, dict):
            raise RoomError("invalid", "payload must be a JSON object")
        return payload

    def _answer_error(self, sid: str, event: str, error: RoomError) -> Any:
        self.metrics.events_rejected.labels(event if event in self._known_events else "unknown", error.code).inc()
        if ACK_REQUESTED.get():
            return {"ok": False, "error": error.to_dict()}
        if error.code == "rate_limited":
            # A flood of events without acks gets one answer a second, not one per event.
            session = self.sessions.get(sid)
            now = time.monotonic()
            if session is not None and now - session.told_limited < 1.0:
                return None
            if session is not None:
                session.told_limited = now
        self.sio.broadcast("error", {**error.to_dict(), "event": event[:64]}, sid)
        return None

    # handlers
    async def _join(self, session: Session, msg: JoinIn) -> dict[str, Any]:
        who = session.identity
        room_id = who.room_id
        head_count = None
        if not session.joined:
            await self.follower.follow(room_id)
            self.metrics.rooms.set(len(list(self.follower.rooms)))
            await self.sio.enter_room(session.sid, room_id)
            await self.sio.enter_room(session.sid, staff_room(room_id) if who.is_staff else audience_room(room_id))
            session.joined = True
            head_count = (await self.presence.enter(session.sid, who)).count
        view = await self.views.current(room_id)
        if view.room.teacher_id is None and who.role is Role.TEACHER and who.is_staff:
            await self.rooms.claim_teacher(room_id, who.user_id)  # the first teacher to open the room
        # Taken in one step, with this socket already in the room: every event after `position` reaches it.
        answer: dict[str, Any] = {"room": view.room.to_dict(), "me": who.me(), "position": view.position.to_dict()}
        answer["stage"] = self.router.stage(room_id)
        sales = view.parts.get(VIEW_PART)
        # The card's server_time is when it was published; clients set their countdown clock by this one.
        answer["sales"] = {**sales, "server_time": now_ms()} if sales is not None else None
        chat = list(view.chat)
        history = None
        if msg.since is not None:
            history = await self.engine.history(room_id, msg.since.position(), self.settings.history_size)
        if history is not None and history.recovered:
            answer.update(recovered=True, position=history.position.to_dict())
            answer["events"] = [wire_for(p, who) for p in history.publications]
        else:
            questions = view.qa.visible_to(who, self.qa.policy.snapshot_max)
            pin = view.qa.pin
            answer.update(recovered=False, chat=chat, qa={"questions": questions, "pin": pin, "voted": []})
            if who.grants.ask and questions:
                votable = [q["id"] for q in questions if q["state"] in ("published", "answered")]
                answer["qa"]["voted"] = sorted(await self.qa.voted(room_id, who.user_id, votable))
        if head_count is None:
            head_count = await self.presence.count(room_id)
        # Per-user presence only where joins are announced (see rooms/presence.py).
        answer["members"] = await self.presence.members(room_id) if head_count <= self.presence.announce_max else []
        answer["head_count"] = head_count
        return answer

    async def _chat_send(self, session: Session, msg: ChatSendIn) -> dict[str, Any]:
        return {"message": await self.chat.send(session.identity, msg.text)}

    async def _chat_delete(self, session: Session, msg: ChatDeleteIn) -> dict[str, Any]:
        await self.chat.delete(session.identity, msg.id)
        return {}

    async def _member_remove(self, session: Session, msg: MemberRemoveIn) -> dict[str, Any]:
        await self.rooms.remove_member(session.identity, msg.user_id, msg.reason)
        return {}

    def _room(self, room_id: str) -> Room:
        view = self.views.get(room_id)
        if view is None:
            raise RoomError("unavailable", "the room is loading; try again")
        return view.room

    async def _qa_ask(self, session: Session, msg: QaAskIn) -> dict[str, Any]:
        who = session.identity
        question = await self.qa.ask(who, self._room(who.room_id), msg.text, msg.anonymous, msg.coins)
        return {"question": question}

    async def _qa_vote(self, session: Session, msg: QaVoteIn) -> dict[str, Any]:
        return await self.qa.vote(session.identity, msg.id, msg.up)

    async def _qa_moderate(self, session: Session, msg: QaModerateIn) -> dict[str, Any]:
        who = session.identity
        return {"question": await self.qa.moderate(who, self._room(who.room_id), msg.id, msg.action)}

    async def _qa_answer(self, session: Session, msg: QaAnswerIn) -> dict[str, Any]:
        who = session.identity
        return {"question": await self.qa.answer(who, self._room(who.room_id), msg.id, msg.text, msg.private)}

    async def _qa_pin(self, session: Session, msg: QaPinIn) -> dict[str, Any]:
        return await self.qa.pin(session.identity, msg.id)

    async def _qa_settings(self, session: Session, msg: QaSettingsIn) -> dict[str, Any]:
        who = session.identity
        room = await self.rooms.update_settings(
            who.room_id, auto_approve=msg.auto_approve, ask_interval_s=msg.ask_interval_s, actor=who
        )
        return {"room": room.to_dict()}

    async def _gift_send(self, session: Session, msg: GiftSendIn) -> dict[str, Any]:
        who = session.identity
        return await self.gifts.send_gift(who, self._room(who.room_id), msg.gift, msg.count, msg.key)

    async def _tip_send(self, session: Session, msg: TipSendIn) -> dict[str, Any]:
        who = session.identity
        return await self.gifts.send_tip(who, self._room(who.room_id), msg.coins, msg.key, msg.message)

    async def _paid_message(self, session: Session, msg: PaidMessageIn) -> dict[str, Any]:
        who = session.identity
        return await self.gifts.send_message(who, self._room(who.room_id), msg.text, msg.coins, msg.key)

    async def _wallet_get(self, session: Session, _: WalletGetIn) -> dict[str, Any]:
        policy = self.gifts.policy
        who = session.identity
        answer = {
            "wallet": await self.gifts.wallet(who.user_id),
            "gifts": [asdict(g) for g in policy.catalogue],
            "packs": [asdict(p) for p in policy.packs],
            "tiers": [asdict(t) for t in policy.tiers],
        }
        if who.is_staff:
            answer["room"] = await self.gifts.room_totals(who.room_id)
        return answer

    async def _wallet_limits(self, session: Session, msg: LimitsIn) -> dict[str, Any]:
        limits = await self.gifts.set_limits(session.identity, msg.per_transfer, msg.daily, msg.hide_on_boards)
        return {"limits": limits}

    async def _board_get(self, session: Session, msg: BoardGetIn) -> dict[str, Any]:
        room = self._room(session.identity.room_id)
        return {"scope": msg.scope, "entries": await self.gifts.board(room, lesson=msg.scope == "lesson")}

    async def _wallet_checkout(self, session: Session, msg: CheckoutIn) -> dict[str, Any]:
        return await self.checkouts.start(session.identity, msg.pack, f"{self.settings.base_url()}/room")

    async def _go_live(self, session: Session, _: EmptyIn) -> dict[str, Any]:
        return {"room": (await self.rooms.go_live(session.identity.room_id, actor=session.identity)).to_dict()}

    async def _end(self, session: Session, _: EmptyIn) -> dict[str, Any]:
        return {"room": (await self.rooms.end(session.identity.room_id, actor=session.identity)).to_dict()}

    # LocalDelivery: called by the follower in offset order
    async def deliver(self, pub: Publication) -> None:
        room_id = pub.room_id
        self.views.apply(pub)
        self.metrics.publications.labels(pub.type).inc()
        self.metrics.delivery_latency.observe(max(0, now_ms() - pub.ts) / 1000)
        split = versions(pub)
        if split is None:
            self.metrics.deliveries.inc(self.sio.broadcast("room:event", pub.wire(), room_id))
        else:
            await self._deliver_versions(pub, split)
        if pub.type == "member.removed":
            user_id = pub.data.get("user_id")
            sids = self.presence.local_sids(room_id, user_id)
            await self._close(sids, "removed", {"reason": pub.data.get("reason", "")})
            if isinstance(user_id, str):
                self._spawn(self.router.drop_member(room_id, user_id))  # WHEP/WHIP sessions have no socket
        elif pub.type == "room.status" and pub.data.get("status") == "ended":
            await self._close(self.presence.local_sids(room_id), None, {})
            self._spawn(self.router.end_room(room_id))
        elif pub.type == "stage.changed":
            self.router.note_stage(room_id, pub.data.get("users", []))

    async def _deliver_versions(self, pub: Publication, split: Versions) -> None:
        """An event whose data differs by audience (rooms/audience.py): staff, author, everyone else."""
        room_id, wire = pub.room_id, pub.wire()
        sent = self.sio.broadcast("room:event", {**wire, "data": split.staff}, staff_room(room_id))
        author_sids = []
        if split.author is not None:
            author_sids = [
                sid
                for sid in self.presence.local_sids(room_id, split.author)
                if (s := self.sessions.get(sid)) is not None and not s.identity.is_staff
            ]
        for sid in author_sids:
            sent += self.sio.broadcast("room:event", {**wire, "data": split.author_data}, sid)
        public = {**wire, "data": split.public} if split.public is not None else {**wire, "type": SKIP, "data": {}}
        sent += self.sio.broadcast("room:event", public, audience_room(room_id), exclude=frozenset(author_sids))
        self.metrics.deliveries.inc(sent)

    async def deliver_ephemeral(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        if event == "sales:order":
            # Staff's orders feed, and the buyer's own connections; nobody else.
            self.sio.broadcast(event, data, staff_room(room_id))
            for sid in self.presence.local_sids(room_id, data["order"]["buyer"]):
                session = self.sessions.get(sid)
                if session is not None and not session.identity.is_staff:
                    self.sio.broadcast(event, data, sid)
            return
        self.sio.broadcast(event, data, room_id)

    async def reload(self, room_id: str, reason: str) -> None:
        self.metrics.reloads.inc()
        try:
            await self.views.load(room_id)
        except (EngineUnavailable, SQLAlchemyError, OSError):
            self.views.drop(room_id)  # the next join loads it again
        self.sio.broadcast("room:reload", {"reason": reason}, room_id)

    async def _close(self, sids: list[str], event: str | None, data: dict[str, Any]) -> None:
        for sid in sids:
            if event is not None:
                await self.sio.emit(event, data, to=sid)
            # Not awaited here: disconnect handlers touch presence, and the follower holds the room lock.
            self._spawn(self.sio.disconnect(sid))

    async def emit_count(self, room_id: str, count: int) -> None:
        self.sio.broadcast("presence:count", {"count": count}, room_id)
