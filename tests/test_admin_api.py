"""The admin API: Basic auth with the API key and secret, strict bodies, rooms and tokens, and an OpenAPI
document that names every route."""

from __future__ import annotations

import base64

import aiohttp
import pytest
import yaml

from live.app import Services, create_app
from tests.conftest import AppFactory
from tests.support import Member, wait_until


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic("test", "test-api-secret")
STUDENT = {"user_id": "u", "name": "n", "role": "student"}


@pytest.fixture
async def api(start_app: AppFactory) -> tuple[str, Services]:
    return await start_app()


async def test_wrong_or_missing_credentials_are_refused(api: tuple[str, Services]) -> None:
    url, services = api
    async with aiohttp.ClientSession() as http:
        for headers in ({}, basic("test", "wrong"), basic("other", "test-api-secret")):
            async with http.post(f"{url}/api/rooms", json={"title": "x"}, headers=headers) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "unauthorized"
        async with http.post(f"{url}/api/rooms", json={"title": "x"}, headers={"Authorization": "Bearer abc"}) as r:
            assert r.status == 401
    assert await services.rooms.list() == []


async def test_room_lifecycle_and_tokens(api: tuple[str, Services]) -> None:
    url, _ = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{url}/api/rooms", json={"title": "Chemistry 101", "id": "chem-101"}) as r:
            assert r.status == 201
            room = await r.json()
            assert room["status"] == "scheduled" and room["id"] == "chem-101"
        async with http.post(f"{url}/api/rooms", json={"title": "Again", "id": "chem-101"}) as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "conflict"
        async with http.post(f"{url}/api/rooms/chem-101/live") as r:
            assert r.status == 200 and (await r.json())["status"] == "live"
        async with http.get(f"{url}/api/rooms", params={"status": "live"}) as r:
            assert [x["id"] for x in (await r.json())["rooms"]] == ["chem-101"]
        async with http.post(
            f"{url}/api/rooms/chem-101/tokens", json={"user_id": "u1", "name": "Ana", "role": "student"}
        ) as r:
            minted = await r.json()
            assert r.status == 200 and minted["url"].endswith(f"/room#token={minted['token']}")
        async with http.post(
            f"{url}/api/rooms/chem-101/tokens", json={"user_id": "t1", "name": "Tess", "role": "teacher"}
        ) as r:
            assert "/studio#token=" in (await r.json())["url"]

        student = Member(url, minted["token"])
        await student.connect()
        snapshot = await student.join()
        assert snapshot["me"]["grants"]["room_admin"] is False and snapshot["me"]["name"] == "Ana"
        async with http.get(f"{url}/api/rooms/chem-101") as r:
            assert (await r.json())["head_count"] == 1

        async with http.post(f"{url}/api/rooms/chem-101/end") as r:
            assert r.status == 200 and (await r.json())["status"] == "ended"
        await wait_until(lambda: not student.sio.connected, what="student disconnected when the room ended")
        async with http.post(f"{url}/api/rooms/chem-101/live") as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "room_ended"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/rooms", {}, 400, "invalid"),
        ("/api/rooms", {"title": ""}, 400, "invalid"),
        ("/api/rooms", {"title": "ok", "id": "Bad Id!"}, 400, "invalid"),
        ("/api/rooms", {"title": "ok", "surprise": 1}, 400, "invalid"),
        ("/api/rooms", {"title": 42}, 400, "invalid"),
        ("/api/rooms", "not json", 400, "invalid"),
        ("/api/rooms", {"title": "x" * 70_000}, 413, "too_large"),
        ("/api/rooms/missing/tokens", {"user_id": "u", "name": "n", "role": "student"}, 404, "not_found"),
        ("/api/rooms/known/tokens", {"user_id": "u", "name": "n", "role": "king"}, 400, "invalid"),
        ("/api/rooms/known/tokens", {"user_id": "u u", "name": "n", "role": "student"}, 400, "invalid"),
        ("/api/rooms/known/tokens", {"user_id": "u", "name": "n", "role": "student", "ttl_s": 10**9}, 400, "invalid"),
        ("/api/rooms/missing/end", None, 404, "not_found"),
        (
            "/api/rooms/known/tokens",
            {"user_id": "u", "name": "n", "role": "student", "grants": {"admin": True}},
            400,
            "invalid",
        ),
        (
            "/api/rooms/known/tokens",
            {"user_id": "u", "name": "n", "role": "student", "grants": {"chat": 1}},
            400,
            "invalid",
        ),
    ],
)
async def test_bad_requests_get_clear_errors_and_change_nothing(
    api: tuple[str, Services], path: str, body: object, status: int, code: str
) -> None:
    url, services = api
    await services.rooms.create("Known", room_id="known")
    async with aiohttp.ClientSession(headers=AUTH) as http:
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        async with http.post(f"{url}{path}", **kwargs) as r:
            assert r.status == status
            assert (await r.json())["error"]["code"] == code
    assert [r.id for r in await services.rooms.list()] == ["known"]


async def test_openapi_document_names_every_admin_route(api: tuple[str, Services]) -> None:
    url, services = api
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/openapi.yaml") as r:
        assert r.status == 200
        doc = yaml.safe_load(await r.text())
    documented = {
        (path, method.upper()) for path, ops in doc["paths"].items() for method in ops if method != "parameters"
    }
    routes = set()
    for route in create_app(services.settings).router.routes():  # built, never started
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/") and route.method != "HEAD":
            routes.add((path, route.method))
    assert routes and routes == documented


async def test_every_admin_route_needs_credentials_and_reads_reject_bad_input(api: tuple[str, Services]) -> None:
    url, services = api
    await services.rooms.create("Known", room_id="known")
    routes = [
        ("POST", "/api/rooms"),
        ("GET", "/api/rooms"),
        ("GET", "/api/rooms/known"),
        ("POST", "/api/rooms/known/live"),
        ("POST", "/api/rooms/known/end"),
        ("POST", "/api/rooms/known/tokens"),
        ("PATCH", "/api/rooms/known"),
        ("GET", "/api/rooms/known/questions"),
        ("GET", "/api/rooms/known/money"),
        ("POST", "/api/wallets/ana/credit"),
        ("GET", "/api/wallets/ana"),
        ("GET", "/api/wallets/ana/statement"),
        ("GET", "/api/ledger/transfers"),
        ("GET", "/api/ledger/accounts"),
        ("POST", "/api/ledger/operations/k/reverse"),
        ("POST", "/api/courses"),
        ("GET", "/api/courses"),
        ("GET", "/api/courses/c1"),
        ("PATCH", "/api/courses/c1"),
        ("GET", "/api/rooms/known/courses"),
        ("PUT", "/api/rooms/known/courses/c1"),
        ("DELETE", "/api/rooms/known/courses/c1"),
        ("POST", "/api/rooms/known/coupons"),
        ("GET", "/api/rooms/known/sales"),
        ("GET", "/api/orders"),
        ("GET", "/api/orders/o1"),
        ("POST", "/api/orders/o1/refund"),
        ("GET", "/api/entitlements"),
        ("POST", "/api/entitlements/ana/c1/progress"),
        ("GET", "/api/webhooks"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            async with http.request(method, f"{url}{path}", json={}) as r:
                assert r.status == 401, (method, path)
        async with http.get(f"{url}/api/rooms", params={"status": "paused"}, headers=AUTH) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid"
        async with http.get(f"{url}/api/rooms/missing", headers=AUTH) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    assert (await services.rooms.require("known")).status.value == "scheduled"


async def test_room_settings_and_question_export_reject_bad_input(api: tuple[str, Services]) -> None:
    url, services = api
    await services.rooms.create("Known", room_id="known")
    async with aiohttp.ClientSession(headers=AUTH) as http:
        bodies = (
            {"qa_ask_interval_s": 3601},
            {"qa_auto_approve": "yes"},
            {"title": "renamed"},
            {"teacher_id": "a b"},
            [],
        )
        for body in bodies:
            async with http.patch(f"{url}/api/rooms/known", json=body) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "invalid", body
        async with http.patch(f"{url}/api/rooms/missing", json={"qa_auto_approve": True}) as r:
            assert r.status == 404
        async with http.get(f"{url}/api/rooms/known/questions", params={"format": "xml"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid"
        async with http.get(f"{url}/api/rooms/missing/questions") as r:
            assert r.status == 404
        async with http.get(f"{url}/api/rooms/known/questions") as r:
            assert r.status == 200 and await r.json() == {"room": "known", "questions": []}
        async with http.patch(f"{url}/api/rooms/known", json={"qa_ask_interval_s": 0}) as r:
            assert r.status == 200 and (await r.json())["qa_ask_interval_s"] == 0
    room = await services.rooms.require("known")
    assert (room.qa_auto_approve, room.qa_ask_interval_s, room.title) == (False, 0, "Known")


async def test_money_routes_reject_bad_input_and_change_nothing(api: tuple[str, Services]) -> None:
    url, services = api
    await services.rooms.create("Known", room_id="known")
    async with aiohttp.ClientSession(headers=AUTH) as http:
        bad_gets = [
            ("/api/wallets/ana/statement", {"account": "savings"}),
            ("/api/wallets/ana/statement", {"limit": "lots"}),
            ("/api/wallets/ana/statement", {"limit": "0"}),
            ("/api/ledger/transfers", {"format": "xml"}),
            ("/api/ledger/transfers", {"since": "-1"}),
            ("/api/ledger/accounts", {"kind": "savings"}),
            ("/api/ledger/accounts", {"format": "xlsx"}),
            ("/api/ledger/accounts", {"limit": "0"}),
            ("/api/wallets/bad%20user", {}),
        ]
        for path, params in bad_gets:
            async with http.get(f"{url}{path}", params=params) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "invalid", (path, params)
        for body in ({"coins": 0, "idempotency_key": "k"}, {"coins": "5", "idempotency_key": "k"}, {"coins": 5}, []):
            async with http.post(f"{url}/api/wallets/ana/credit", json=body) as r:
                assert r.status == 400, body
        async with http.post(
            f"{url}/api/ledger/operations/nope/reverse", json={"reason": "x", "idempotency_key": "r"}
        ) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        async with http.get(f"{url}/api/rooms/missing/money") as r:
            assert r.status == 404
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/payments/paypal/webhook", data=b"{}") as r:
        assert r.status == 404
    assert await services.ledger.total() == 0
    assert (await services.gifts.wallet("ana"))["balance"] == 0


async def test_every_wallet_exports_with_its_balance(api: tuple[str, Services]) -> None:
    url, _ = api
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for user, coins in (("ana", 30), ("-bob", 5), ("cy", 12)):
            body = {"coins": coins, "idempotency_key": f"fund-{user}"}
            async with http.post(f"{url}/api/wallets/{user}/credit", json=body) as r:
                assert r.status == 201, await r.text()
        async with http.get(f"{url}/api/ledger/accounts", params={"kind": "wallet"}) as r:
            wallets = (await r.json())["accounts"]
        assert [(w["owner"], w["balance"]) for w in wallets] == [("-bob", 5), ("ana", 30), ("cy", 12)]
        async with http.get(f"{url}/api/ledger/accounts", params={"kind": "wallet", "limit": "2"}) as r:
            first = (await r.json())["accounts"]
        after = {"kind": "wallet", "after": first[-1]["id"]}
        async with http.get(f"{url}/api/ledger/accounts", params=after) as r:
            rest = (await r.json())["accounts"]
        assert [w["id"] for w in first + rest] == [w["id"] for w in wallets]  # paged by id, nothing twice
        async with http.get(f"{url}/api/ledger/accounts") as r:
            every = (await r.json())["accounts"]
        assert sum(a["balance"] for a in every) == 0  # the world account holds what came in
        async with http.get(f"{url}/api/ledger/accounts", params={"kind": "wallet", "format": "csv"}) as r:
            assert r.content_type == "text/csv"
            lines = (await r.text()).splitlines()
        assert lines[0] == "id,kind,owner,balance,created_at"
        assert lines[1].startswith("wallet:-bob,wallet,'-bob,5,")  # a leading - could start a formula
