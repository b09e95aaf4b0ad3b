// Minimal Socket.IO 4 reference for bench/fanout.py: the same room events as live-classroom
// (docs/protocol.md), nothing else. Several instances share one Redis through
// @socket.io/redis-adapter, exactly as a plain Node deployment would.
//
//   PORT=3001 REDIS_URL=redis://127.0.0.1:6379/0 node server.js
//
// Deliberately skipped: token signature checks, rate limits, persistence, presence.
// Kept: the room is taken from the token, `join` is acked, every `chat:send` gets a
// per-room offset from Redis (INCR, one round trip like our Lua XADD+PUBLISH) and is
// broadcast as `room:event` to the room on every instance.

"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = Number(process.env.PORT || 3001);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";

function decodeClaims(token) {
  // Payload only; the benchmark mints valid tokens and the reference does not verify them.
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    return JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    return null;
  }
}

function connectError(code, message) {
  const err = new Error(message);
  err.data = { code, message };
  return err;
}

async function main() {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  const store = pub.duplicate(); // offsets and epochs; kept off the adapter's pub connection
  for (const c of [pub, sub, store]) c.on("error", (e) => console.error("redis:", e.message));
  await Promise.all([pub.connect(), sub.connect(), store.connect()]);

  const httpServer = http.createServer((req, res) => {
    const ok = req.url === "/readyz" || req.url === "/healthz";
    res.writeHead(ok ? 200 : 404, { "content-type": "application/json" });
    res.end(ok ? '{"ready":true,"engine":"node-reference"}' : '{"error":{"code":"not_found"}}');
  });
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub), serveClient: false });

  io.use((socket, next) => {
    const claims = decodeClaims(socket.handshake.auth && socket.handshake.auth.token);
    if (!claims || typeof claims.room !== "string" || typeof claims.sub !== "string") {
      return next(connectError("unauthorized", "missing or malformed token"));
    }
    socket.data.claims = claims;
    next();
  });

  io.on("connection", (socket) => {
    const c = socket.data.claims;
    const room = c.room;
    const grants = c.grants || {};
    socket.join(room);
    let joined = false;

    socket.on("join", async (_payload, ack) => {
      if (typeof ack !== "function") return;
      const epoch = await roomEpoch(store, room);
      const offset = Number((await store.get(`ref:room:${room}:offset`)) || 0);
      joined = true;
      ack({
        ok: true,
        recovered: false,
        room: { id: room, title: room, status: "live", scheduled_at: null, created_at: Date.now(),
                started_at: null, ended_at: null },
        me: { user_id: c.sub, name: c.name, role: c.role, grants },
        position: { epoch, offset },
        chat: [],
        members: [],
        head_count: 0,
      });
    });

    socket.on("chat:send", async (payload, ack) => {
      const reply = typeof ack === "function" ? ack : () => {};
      if (!joined) return reply({ ok: false, error: { code: "not_joined", message: "join first" } });
      if (!grants.chat) return reply({ ok: false, error: { code: "forbidden", message: "no chat grant" } });
      const text = payload && typeof payload.text === "string" ? payload.text.trim() : "";
      if (!text || text.length > 500) {
        return reply({ ok: false, error: { code: "too_long", message: "1-500 characters" } });
      }
      const [epoch, offset] = await Promise.all([
        roomEpoch(store, room),
        store.incr(`ref:room:${room}:offset`),
      ]);
      const ts = Date.now();
      const message = { id: `${epoch}-${offset}`, user_id: c.sub, name: c.name, role: c.role, text, ts };
      io.to(room).emit("room:event", { offset, epoch, type: "chat.message", data: message, ts });
      reply({ ok: true, message });
    });
  });

  httpServer.listen(PORT, "127.0.0.1", () => console.log(`reference listening on 127.0.0.1:${PORT}`));

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit(), store.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

const epochs = new Map();
async function roomEpoch(store, room) {
  // One epoch per room, shared by all instances: the first to ask creates it.
  let epoch = epochs.get(room);
  if (epoch) return epoch;
  const key = `ref:room:${room}:epoch`;
  await store.set(key, Math.random().toString(36).slice(2, 10), { NX: true });
  epoch = await store.get(key);
  epochs.set(room, epoch);
  return epoch;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
