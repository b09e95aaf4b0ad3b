// The room (student) and studio (staff) pages. Text from users is only ever set with textContent.
import {RoomClient, describeError, readToken} from '/static/client.js';
import {mountMoney} from '/static/money.js';
import {mountMedia} from '/static/media.js';
import {mountQa} from '/static/qa.js';
import {mountSales} from '/static/sales.js';

const $ = (id) => document.getElementById(id);
const studio = document.body.dataset.page === 'studio';
const MAX_CHAT_ITEMS = 300;

const CONN_LABELS = {
  connecting: 'Connecting', joining: 'Joining', live: 'Connected', reconnecting: 'Reconnecting',
  waiting: 'Waiting', offline: 'Offline', ended: 'Ended', removed: 'Removed', refused: 'Not connected',
};
const STATUS_LABELS = {scheduled: 'Not started', live: 'Live', ended: 'Ended'};

/** createElement with properties (`textContent`, `className`, …) and `data-*` attributes. */
function el(tag, props = {}, data = {}) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, data);
  return node;
}

function setNotice(text) {
  $('notice').textContent = text;
  $('notice').hidden = !text;
}

let client = null;

function renderConn() {
  const {state, message} = client.conn;
  $('conn-state').textContent = CONN_LABELS[state] || state;
  $('conn-state').dataset.state = state;
  setNotice(message);
  renderControls();
}

function renderRoom() {
  const room = client.room;
  if (!room) return;
  $('room-title').textContent = room.title;
  document.title = `${room.title} · ${studio ? 'Studio' : 'Live lesson'}`;
  $('room-status').textContent = STATUS_LABELS[room.status] || room.status;
  $('room-status').dataset.status = room.status;
  renderControls();
}

function renderControls() {
  const live = client.conn.state === 'live';
  const grants = (client.me && client.me.grants) || {};
  const open = client.room && client.room.status !== 'ended';
  const canChat = live && open && grants.chat;
  $('chat-input').disabled = !canChat;
  $('chat-send').disabled = !canChat;
  $('chat-input').placeholder = client.me && !grants.chat ? 'Chat is off for you' : 'Say something…';
  if (!canChat) $('chat-error').textContent = '';
  if (studio) {
    const admin = live && open && grants.room_admin;
    $('go-live').disabled = !admin || client.room.status !== 'scheduled';
    $('end-room').disabled = !admin;
    if (client.me && !grants.room_admin) $('action-error').textContent = 'This link does not allow running the lesson.';
  }
}

function renderCount() {
  $('head-count').textContent = String(client.headCount);
}

const isStaff = (role) => role === 'teacher' || role === 'assistant';

function renderMembers() {
  const members = [...client.members.values()].sort(
    (a, b) => isStaff(b.role) - isStaff(a.role) || a.name.localeCompare(b.name),
  );
  const me = client.me && client.me.user_id;
  const admin = studio && client.me && client.me.grants.room_admin;
  $('member-list').replaceChildren(...members.map((m) => {
    const li = el('li', {className: 'member'}, {testid: 'member', userId: m.user_id});
    li.append(el('span', {className: 'name', textContent: m.name}));
    if (isStaff(m.role)) li.append(el('span', {className: 'role', textContent: m.role}));
    const onStage = client.stage.includes(m.user_id);
    if (onStage) li.append(el('span', {className: 'role', textContent: 'on stage'}, {testid: 'on-stage'}));
    if (m.user_id === me) li.append(el('span', {className: 'you', textContent: '(you)'}));
    else if (admin) {
      if (!isStaff(m.role)) {
        const stage = el('button', {className: 'small', textContent: onStage ? 'Back to audience' : 'Invite on stage'},
          {testid: onStage ? 'stage-remove' : 'stage-invite'});
        stage.addEventListener('click', () => staffAction(onStage ? 'stage:remove' : 'stage:invite', {user_id: m.user_id}));
        li.append(stage);
      }
      const button = el('button', {className: 'small', textContent: 'Remove', title: `Remove ${m.name}`},
        {testid: 'member-remove'});
      button.addEventListener('click', () => removeMember(m));
      li.append(button);
    }
    return li;
  }));
}

function chatItem(msg) {
  const li = el('li', {className: 'message'}, {testid: 'chat-message', id: msg.id});
  const time = new Date(msg.ts);
  li.append(
    el('time', {dateTime: time.toISOString(), textContent: time.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})}),
    el('span', {className: 'name', textContent: msg.name}),
  );
  if (isStaff(msg.role)) li.append(el('span', {className: 'role', textContent: msg.role}));
  li.append(el('span', {className: 'text', textContent: msg.text}, {testid: 'chat-text'}));
  if (studio && client.me && client.me.grants.room_admin) {
    const button = el('button', {className: 'small', textContent: 'Delete', title: 'Delete this message'},
      {testid: 'chat-delete'});
    button.addEventListener('click', () => deleteMessage(msg.id));
    li.append(button);
  }
  return li;
}

function renderChat(change) {
  const list = $('chat-list');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  if (change.added) list.append(chatItem(change.added));
  else if (change.deleted) {
    for (const li of list.children) if (li.dataset.id === change.deleted) li.remove();
  } else {
    list.replaceChildren(...[...client.chat.values()].slice(-MAX_CHAT_ITEMS).map(chatItem));
  }
  while (list.children.length > MAX_CHAT_ITEMS) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

async function sendChat(event) {
  event.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  $('chat-send').disabled = true;
  const answer = await client.sendChat(text);
  renderControls();
  $('chat-error').textContent = answer.ok ? '' : describeError(answer.error);
  if (answer.ok) {
    input.value = '';
    $('chat-list').scrollTop = $('chat-list').scrollHeight;
  }
  input.focus();
}

// Staff actions: errors go to the toolbar line.
async function staffAction(event, payload) {
  const answer = await client.request(event, payload);
  $('action-error').textContent = answer.ok ? '' : describeError(answer.error);
  if (answer.ok && answer.room) {
    client.room = answer.room;
    renderRoom();
  }
  return answer;
}

/** Ask for confirmation in the page's <dialog>; resolves to the reason typed, or null if cancelled. */
function ask(text, withReason) {
  const dialog = $('ask');
  $('ask-text').textContent = text;
  $('ask-reason').value = '';
  $('ask-reason-label').hidden = !withReason;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok' ? $('ask-reason').value.trim() : null),
      {once: true});
  });
}

async function removeMember(member) {
  const reason = await ask(`Remove ${member.name} from this lesson? They cannot come back.`, true);
  if (reason !== null) staffAction('member:remove', reason ? {user_id: member.user_id, reason} : {user_id: member.user_id});
}

async function deleteMessage(id) {
  if ((await ask('Delete this message for everyone?', false)) !== null) staffAction('chat:delete', {id});
}

function start() {
  const token = readToken();
  if (!token) {
    $('conn-state').textContent = CONN_LABELS.refused;
    $('conn-state').dataset.state = 'refused';
    setNotice('This page needs a join link: ask your teacher or host for one.');
    return;
  }
  client = new RoomClient(token);
  window.roomClient = client; // for tests and the browser console
  client.addEventListener('change', ({detail}) => {
    switch (detail.what) {
      case 'conn': return renderConn();
      case 'room': return renderRoom();
      case 'members': return renderMembers();
      case 'stage': return renderMembers();
      case 'count': return renderCount();
      case 'chat': return renderChat(detail);
      case 'reset':
        renderRoom();
        renderMembers();
        renderCount();
        return renderChat({});
      default: return undefined;
    }
  });
  client.addEventListener('failure', ({detail}) => setNotice(describeError(detail)));
  mountQa(client, studio);
  mountMoney(client, studio);
  mountMedia(client, studio);
  mountSales(client, studio, {ask});
  $('ask-cancel').addEventListener('click', () => $('ask').close('cancel'));
  $('chat-form').addEventListener('submit', sendChat);
  if (studio) {
    $('go-live').addEventListener('click', () => staffAction('room:go_live', {}));
    $('end-room').addEventListener('click', async () => {
      if ((await ask('End the lesson for everyone? This cannot be undone.', false)) !== null) {
        staffAction('room:end', {});
      }
    });
  }
}

start();
