// Room connection and state, shared by the room and studio pages (see docs/protocol.md).
// Needs the socket.io-client browser build loaded first (global `io`).

const ACK_TIMEOUT_MS = 10000;
const RETRY_MS = 10000; // after a refusal that may pass: room_not_found, unavailable

// Messages for refused connections and failed events, by error code.
const MESSAGES = {
  unauthorized: 'This link is not valid or has expired. Ask for a new link.',
  room_not_found: 'This lesson does not exist yet. Waiting for the teacher to open it…',
  room_ended: 'This lesson has ended.',
  banned: 'You were removed from this lesson.',
  too_long: 'Messages must be 1 to 500 characters.',
  too_large: 'That is too large to send.',
  forbidden: 'You are not allowed to do that here.',
  unavailable: 'The server is having trouble. Nothing was saved; try again in a moment.',
  not_joined: 'Still connecting; try again in a moment.',
  not_found: 'That no longer exists.',
  invalid_state: 'That question has moved on; refresh the list.',
  own_question: 'You cannot vote on your own question.',
  invalid: 'The server did not understand that request.',
  timeout: 'No answer from the server; it may not have been done.',
};

/** Readable text for an error `{code, message, retry_after_ms?}`. */
export function describeError(error) {
  if (error.code === 'rate_limited') {
    const seconds = Math.max(1, Math.ceil((error.retry_after_ms || 1000) / 1000));
    return `You are going too fast. Try again in ${seconds} s.`;
  }
  return MESSAGES[error.code] || error.message || `Error: ${error.code}`;
}

/** The join token from the URL fragment (`#token=JWT`); it never goes into a query string. */
export function readToken() {
  return new URLSearchParams(location.hash.slice(1)).get('token');
}

/**
 * One user's connection to the room named by the token.
 *
 * State lives in plain fields (room, me, members, headCount, chat, questions, pin, voted, position,
 * conn). Every change is announced as a `change` event whose `detail.what` is one of: conn, room,
 * members, count, chat, qa, sales, reset (everything was replaced). Server `error` events are announced as
 * `failure`; orders as `sales-order`.
 */
export class RoomClient extends EventTarget {
  constructor(token) {
    super();
    this.room = null;
    this.me = null;
    this.members = new Map(); // user_id -> Member
    this.headCount = 0;
    this.chat = new Map(); // id -> ChatMessage, in arrival order
    this.questions = new Map(); // id -> Question, as this user may see it
    this.pin = null; // id of the question staff are answering now
    this.voted = new Set(); // ids of questions this user has upvoted
    this.money = []; // recent gifts and tips: every one for staff, the biggest for students
    this.stage = []; // user ids of students invited to publish
    this.sales = null; // SalesState: the pinned course card, its flash sale and live coupons
    this.clockOffset = 0; // server time minus local time, in ms, from the newest fresh `server_time`
    this.position = null; // {epoch, offset} of the last applied room event
    this.conn = {state: 'connecting', message: ''};

    this.joinSeq = 0; // ignores answers to superseded joins
    this.buffer = null; // room events received while a join is pending, else null
    this.socket = io(location.origin, {auth: {token}, transports: ['websocket']});
    this.listen();
  }

  listen() {
    const s = this.socket;
    s.on('connect', () => this.join(this.position));
    s.on('connect_error', (err) => this.refused(err));
    s.on('disconnect', (reason) => {
      this.joinSeq++;
      this.buffer = null;
      if (this.conn.state === 'ended' || this.conn.state === 'removed') return;
      // After a server-side disconnect socket.io does not reconnect by itself.
      if (reason === 'io server disconnect') this.setConn('offline', 'Disconnected by the server.');
      else this.setConn('reconnecting', 'Connection lost; reconnecting…');
    });
    s.io.on('reconnect_attempt', () => this.setConn('reconnecting', 'Reconnecting…'));

    s.on('room:event', (ev) => {
      if (this.buffer) this.buffer.push(ev);
      else this.receive(ev);
    });
    s.on('room:reload', () => {
      this.position = null;
      this.join(null);
    });
    s.on('presence:joined', (m) => {
      this.members.set(m.user_id, m);
      this.emitChange('members');
    });
    s.on('presence:left', ({user_id}) => {
      this.members.delete(user_id);
      this.emitChange('members');
    });
    s.on('presence:count', ({count}) => {
      this.headCount = count;
      this.emitChange('count');
    });
    s.on('removed', ({reason}) => {
      this.setConn('removed', reason ? `You were removed from this lesson: ${reason}` : MESSAGES.banned);
    });
    s.on('error', (err) => this.dispatchEvent(new CustomEvent('failure', {detail: err})));
    s.on('media:offer', (offer) => this.dispatchEvent(new CustomEvent('media-offer', {detail: offer})));
    s.on('media:restart', () => this.dispatchEvent(new CustomEvent('media-restart')));
    // Orders placed, paid, expired or refunded: staff get the room's, a student their own (not numbered).
    s.on('sales:order', ({order}) => this.dispatchEvent(new CustomEvent('sales-order', {detail: order})));
  }

  refused(err) {
    const code = err.data && err.data.code;
    if (!code) {
      // Transport failure: socket.io's manager keeps retrying.
      this.setConn('reconnecting', 'Cannot reach the server; retrying…');
    } else if (code === 'room_not_found' || code === 'unavailable') {
      // Worth waiting for: the teacher has not opened the room yet, or the server is recovering.
      this.setConn('waiting', code === 'unavailable' ? 'The server is briefly unavailable; retrying…' : MESSAGES[code]);
      setTimeout(() => this.socket.connect(), RETRY_MS);
    } else {
      const state = {room_ended: 'ended', banned: 'removed'}[code] || 'refused';
      this.setConn(state, MESSAGES[code] || err.data.message || err.message);
    }
  }

  /** Send `join`, recovering from `since` if given, else taking a fresh snapshot. */
  join(since) {
    const seq = ++this.joinSeq;
    this.buffer = [];
    this.setConn('joining', '');
    const payload = since ? {since: {epoch: since.epoch, offset: since.offset}} : {};
    this.socket.timeout(ACK_TIMEOUT_MS).emit('join', payload, (timedOut, answer) => {
      if (seq !== this.joinSeq) return;
      if (timedOut) {
        if (this.socket.connected) this.join(since); // else the next `connect` joins again
        return;
      }
      if (!answer.ok) {
        const {code, retry_after_ms: wait} = answer.error;
        if (code === 'unavailable' || code === 'rate_limited') {
          this.setConn('waiting', describeError(answer.error));
          setTimeout(() => seq === this.joinSeq && this.join(since), wait || RETRY_MS / 4);
          return;
        }
        this.buffer = null;
        return this.setConn(code === 'room_ended' ? 'ended' : 'refused', describeError(answer.error));
      }
      this.joined(answer);
    });
  }

  joined(answer) {
    this.room = answer.room;
    this.me = answer.me;
    this.stage = answer.stage || [];
    this.members = new Map(answer.members.map((m) => [m.user_id, m]));
    this.headCount = answer.head_count;
    const early = this.buffer;
    this.buffer = null;
    this.setConn('live', '');

    if (answer.recovered) {
      for (const ev of answer.events) this.apply(ev);
      if (answer.position) this.position = answer.position;
      this.emitChange('room');
      this.emitChange('members');
      this.emitChange('count');
    } else {
      this.chat = new Map(answer.chat.map((m) => [m.id, m]));
      this.questions = new Map(answer.qa.questions.map((q) => [q.id, q]));
      this.pin = answer.qa.pin;
      this.voted = new Set(answer.qa.voted);
      this.position = answer.position;
      this.emitChange('reset');
    }
    // Events that raced the answer: the ones the answer already covers are dropped by receive().
    for (const ev of early) {
      if (this.buffer) break; // a gap started another join, which will cover the rest
      this.receive(ev);
    }
    // Last: its server_time is fresh, while replayed `sales.card` events carry the time they were sent.
    this.setSales(answer.sales);
    this.dispatchEvent(new CustomEvent('joined'));
  }

  /** Replace the sales state; a `server_time` in it sets the clock countdowns are shown by. */
  setSales(state) {
    if (state && state.server_time) this.clockOffset = state.server_time - Date.now();
    this.sales = state;
    this.emitChange('sales');
  }

  /** The server's clock, as best this client knows it (ms since the epoch). */
  serverNow() {
    return Date.now() + this.clockOffset;
  }

  /** A live room event: apply it if it is the next one, re-join on a gap or a new epoch. */
  receive(ev) {
    const pos = this.position;
    if (pos && ev.epoch === pos.epoch) {
      if (ev.offset <= pos.offset) return; // already applied
      if (ev.offset === pos.offset + 1) return this.apply(ev);
    }
    this.join(pos);
  }

  apply(ev) {
    this.position = {epoch: ev.epoch, offset: ev.offset};
    const d = ev.data;
    switch (ev.type) {
      case 'chat.message':
        if (this.chat.has(d.id)) break; // our own message, already added from the ack
        this.chat.set(d.id, d);
        this.emitChange('chat', {added: d});
        break;
      case 'chat.deleted':
        this.chat.delete(d.id);
        this.emitChange('chat', {deleted: d.id});
        break;
      case 'member.removed':
        this.members.delete(d.user_id);
        this.emitChange('members');
        break;
      case 'stage.changed':
        this.stage = d.users;
        this.emitChange('stage');
        break;
      case 'room.status':
        this.room = d;
        if (d.status === 'ended') this.setConn('ended', MESSAGES.room_ended);
        this.emitChange('room');
        break;
      case 'qa.question':
        if (d.q.removed) {
          this.questions.delete(d.q.id);
          this.voted.delete(d.q.id);
        } else this.questions.set(d.q.id, d.q);
        this.pin = d.pin;
        this.emitChange('qa');
        break;
      case 'qa.pin':
        this.pin = d.id;
        this.emitChange('qa');
        break;
      case 'money':
        // Staff get every event ({events, public}); everyone else a summary ({gifts, coins, highlights}).
        this.money = [...this.money, ...(d.events || d.highlights)].slice(-100);
        this.emitChange('money', {events: d.events || d.highlights, summary: d.public || d});
        break;
      case 'sales.card':
        this.setSales(d);
        break;
      case 'sales.seats':
        if (this.sales && this.sales.sale && this.sales.sale.id === d.sale_id) {
          this.sales = {...this.sales, seats_left: d.seats_left};
          this.emitChange('sales');
        }
        break;
      case 'qa.votes':
        for (const [id, votes] of Object.entries(d.counts)) {
          const q = this.questions.get(id);
          if (q) this.questions.set(id, {...q, votes});
        }
        this.emitChange('qa');
        break;
      default:
        break; // `skip` (an event meant for others) and types added later (gifts, …)
    }
  }

  /** Emit a client event; resolves to the ack `{ok, ...}`, with `{ok: false, error}` on timeout. */
  request(event, payload) {
    return this.socket
      .timeout(ACK_TIMEOUT_MS)
      .emitWithAck(event, payload)
      .catch(() => ({ok: false, error: {code: 'timeout', message: MESSAGES.timeout}}));
  }

  async sendChat(text) {
    const answer = await this.request('chat:send', {text});
    // Shown at once; its room event, which may come later, is then skipped by id.
    if (answer.ok && !this.chat.has(answer.message.id)) {
      this.chat.set(answer.message.id, answer.message);
      this.emitChange('chat', {added: answer.message});
    }
    return answer;
  }

  /** Ask a question, with coins attached if `coins`; it shows at once (pending ones only to the asker and staff). */
  async ask(text, anonymous, coins = 0) {
    const answer = await this.request('qa:ask', coins ? {text, anonymous, coins} : {text, anonymous});
    if (answer.ok && !this.questions.has(answer.question.id)) {
      this.questions.set(answer.question.id, {...answer.question, mine: true});
      this.emitChange('qa');
    }
    return answer;
  }

  /** Upvote (`up`) or take the vote back; the count shown is the server's answer. */
  async vote(id, up) {
    const answer = await this.request('qa:vote', {id, up});
    if (answer.ok) {
      if (answer.voted) this.voted.add(id);
      else this.voted.delete(id);
      const q = this.questions.get(id);
      if (q) this.questions.set(id, {...q, votes: answer.votes});
      this.emitChange('qa');
    }
    return answer;
  }

  setConn(state, message) {
    this.conn = {state, message};
    this.emitChange('conn');
  }

  emitChange(what, extra = {}) {
    this.dispatchEvent(new CustomEvent('change', {detail: {what, ...extra}}));
  }
}
