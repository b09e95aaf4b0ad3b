// The Q&A panel of the room page (ask, upvote, see answers and the pinned question) and of the studio
// (moderation queue, approve / dismiss / hide / pin / answer). Text from users is only set with textContent.
import {describeError} from '/static/client.js';

const $ = (id) => document.getElementById(id);
const MAX_ITEMS = 300;
const STATE_LABELS = {
  pending: 'Awaiting review', published: '', answered: 'Answered', dismissed: 'Dismissed', hidden: 'Hidden',
};
// Studio filters: which states each shows.
const FILTERS = {queue: ['pending'], live: ['published', 'answered'], closed: ['dismissed', 'hidden']};

function el(tag, props = {}, data = {}) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, data);
  return node;
}

function button(text, testid, onClick, extra = {}) {
  const b = el('button', {className: 'small', textContent: text, type: 'button', ...extra}, {testid});
  b.addEventListener('click', onClick);
  return b;
}

const byTop = (a, b) => b.votes - a.votes || a.ts - b.ts;
const byRecent = (a, b) => b.ts - a.ts;
// Paid questions come first in the staff's lists, the biggest amount first (the teacher's queue).
const paidFirst = (order) => (a, b) => (b.paid || 0) - (a.paid || 0) || order(a, b);

/** Text describing an answer as this viewer may see it. */
function answerText(answer) {
  if (!answer) return '';
  if (answer.live) return 'Answered live';
  if (answer.text === null) return 'Answered privately to the person who asked';
  return (answer.private ? 'Private answer: ' : 'Answer: ') + answer.text;
}

export function mountQa(client, studio) {
  let scheduled = false;
  const render = () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      renderList();
      renderPinned();
      renderControls();
    });
  };

  function show(answer) {
    $('qa-error').textContent = answer.ok ? '' : describeError(answer.error);
    return answer;
  }

  function renderControls() {
    const live = client.conn.state === 'live';
    const grants = (client.me && client.me.grants) || {};
    const open = client.room && client.room.status !== 'ended';
    if (studio) {
      $('qa-auto-approve').disabled = !(live && open && grants.room_admin);
      if (client.room) $('qa-auto-approve').checked = Boolean(client.room.qa_auto_approve);
      const pending = [...client.questions.values()].filter((q) => q.state === 'pending').length;
      $('qa-counts').textContent = `${client.questions.size} questions, ${pending} waiting for review`;
    } else {
      const canAsk = live && open && grants.ask;
      $('qa-input').disabled = !canAsk;
      $('qa-ask').disabled = !canAsk;
      $('qa-input').placeholder = client.me && !grants.ask ? 'Questions are off for you' : 'Ask the teacher a question…';
    }
  }

  function renderPinned() {
    const q = client.pin && client.questions.get(client.pin);
    $('qa-pinned').hidden = !q;
    $('qa-pinned-text').textContent = q ? q.text : '';
    $('qa-pinned-answer').textContent = q ? answerText(q.answer) : '';
  }

  function visible() {
    let list = [...client.questions.values()];
    if (studio) list = list.filter((q) => FILTERS[$('qa-filter').value].includes(q.state));
    const order = $('qa-sort').value === 'top' ? byTop : byRecent;
    return list.sort(studio ? paidFirst(order) : order).slice(0, MAX_ITEMS);
  }

  function item(q) {
    const li = el('li', {className: 'question'}, {testid: 'qa-item', id: q.id, state: q.state});
    if (q.id === client.pin) li.classList.add('pinned');
    const head = el('div', {className: 'question-head'});
    const author = q.author ? q.author.name : 'Anonymous';
    head.append(el('span', {className: 'name', textContent: q.mine ? `${author} (you)` : author}, {testid: 'qa-author'}));
    if (studio && q.anonymous) head.append(el('span', {className: 'role', textContent: 'asked anonymously'}));
    if (q.paid) head.append(el('span', {className: 'badge paid', textContent: `${q.paid} coins`}, {testid: 'qa-paid'}));
    if (STATE_LABELS[q.state]) head.append(el('span', {className: 'badge', textContent: STATE_LABELS[q.state]}, {testid: 'qa-state'}));
    li.append(head, el('p', {className: 'text', textContent: q.text}, {testid: 'qa-text'}));
    if (q.answer) li.append(el('p', {className: 'answer', textContent: answerText(q.answer)}, {testid: 'qa-answer'}));

    const row = el('div', {className: 'question-actions'});
    const votable = q.state === 'published' || q.state === 'answered';
    const mine = client.voted.has(q.id);
    const vote = button(`▲ ${q.votes}`, 'qa-upvote', async () => {
      vote.disabled = true;
      show(await client.vote(q.id, !mine));
      vote.disabled = false;
    }, {title: mine ? 'Take your vote back' : 'Upvote', ariaPressed: String(mine)});
    vote.classList.toggle('voted', mine);
    vote.disabled = !votable || q.mine || !(client.me && client.me.grants.ask);
    vote.append(el('span', {className: 'visually-hidden', textContent: ' votes'}));
    row.append(vote);
    if (studio) row.append(...staffButtons(q));
    li.append(row);
    return li;
  }

  function staffButtons(q) {
    const act = (action) => async () => show(await client.request('qa:moderate', {id: q.id, action}));
    const out = [];
    if (q.state === 'pending') out.push(button('Approve', 'qa-approve', act('approve')));
    if (q.state === 'pending' || q.state === 'published') out.push(button('Dismiss', 'qa-dismiss', act('dismiss')));
    if (q.state === 'published' || q.state === 'answered') {
      if (client.pin !== q.id) {
        out.push(button('Pin', 'qa-pin', async () => show(await client.request('qa:pin', {id: q.id}))));
      }
      out.push(button('Answer', 'qa-answer-open', (event) => openAnswer(q, event.target.closest('.question-actions'))));
    }
    if (q.state === 'published') out.push(button('Answered live', 'qa-answered-live', act('answered_live')));
    if (['answered', 'dismissed', 'hidden'].includes(q.state)) out.push(button('Reopen', 'qa-reopen', act('reopen')));
    if (q.state !== 'hidden') out.push(button('Hide', 'qa-hide', act('hide')));
    return out;
  }

  function openAnswer(q, row) {
    if (!row || row.querySelector('form')) return;
    const form = el('form', {className: 'answer-form'});
    const input = el('textarea', {maxLength: 2000, rows: 2, placeholder: 'Your answer…'}, {testid: 'qa-answer-input'});
    input.setAttribute('aria-label', 'Answer');
    const priv = el('input', {type: 'checkbox'}, {testid: 'qa-answer-private'});
    const label = el('label', {className: 'check'});
    label.append(priv, ' Only to the person who asked');
    const send = el('button', {textContent: 'Send answer', className: 'small primary'}, {testid: 'qa-answer-send'});
    form.append(input, label, send);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      send.disabled = true;
      const answer = show(await client.request('qa:answer', {id: q.id, text, private: priv.checked}));
      send.disabled = false;
      if (answer.ok) form.remove();
    });
    row.after(form);
    input.focus();
  }

  function renderList() {
    const list = $('qa-list');
    // An open answer form survives re-renders of the list: its question's item is kept in place.
    const open = list.querySelector('form.answer-form');
    const openId = open && open.closest('li').dataset.id;
    list.replaceChildren(...visible().map((q) => {
      const li = item(q);
      if (q.id === openId) li.append(open);
      return li;
    }));
  }

  client.addEventListener('change', ({detail}) => {
    if (['qa', 'reset', 'room', 'conn'].includes(detail.what)) render();
  });
  $('qa-sort').addEventListener('change', render);
  if (studio) {
    $('qa-filter').addEventListener('change', render);
    $('qa-unpin').addEventListener('click', async () => show(await client.request('qa:pin', {id: null})));
    $('qa-auto-approve').addEventListener('change', async (event) => {
      const answer = show(await client.request('qa:settings', {auto_approve: event.target.checked}));
      if (answer.ok) client.room = answer.room;
      render();
    });
  } else {
    $('qa-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const input = $('qa-input');
      const text = input.value.trim();
      if (!text) return;
      $('qa-ask').disabled = true;
      const coins = Number($('qa-coins').value || 0);
      const answer = show(await client.ask(text, $('qa-anonymous').checked, coins));
      renderControls();
      if (answer.ok) {
        input.value = '';
        $('qa-coins').value = '';
      }
    });
  }
  render();
}
