// Wallet, top-up, gift bar and tips (room page); live feed of gifts and this lesson's earnings (studio).
// Text from users is only set with textContent.
import {describeError} from '/static/client.js';

const $ = (id) => document.getElementById(id);
const FEED_ITEMS = 50;
function el(tag, props = {}, data = {}) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, data);
  return node;
}

function newKey() {
  return crypto.randomUUID().replaceAll('-', '');
}

function describe(event) {
  const d = event.data;
  const who = d.from ? d.from.name : 'Someone';
  if (event.type === 'gift.sent') {
    const combo = d.combo > d.count ? ` · combo ×${d.combo}` : '';
    return `${who} sent ${d.count} × ${d.gift.name} (${d.coins} coins)${combo}`;
  }
  if (event.type === 'message.paid') return `${who} (${d.coins} coins): ${d.text}`;
  if (event.type === 'tip.sent') return `${who} tipped ${d.coins} coins${d.message ? `: ${d.message}` : ''}`;
  return `${who}: ${d.coins} coins`;
}

export function mountMoney(client, studio) {
  let wallet = null;
  let lessonEarnings = 0;

  const show = (answer) => {
    $('money-error').textContent = answer.ok ? '' : describeError(answer.error);
    return answer;
  };

  async function refresh() {
    const answer = await client.request('wallet:get', {});
    if (!answer.ok) return show(answer);
    wallet = answer.wallet;
    if (studio) {
      lessonEarnings = answer.room ? answer.room.teacher : 0;
      $('lesson-earnings').textContent = String(lessonEarnings);
    } else {
      $('wallet-balance').textContent = String(wallet.balance);
      if (!$('gift-bar').children.length) renderShop(answer.gifts, answer.packs);
    }
    return answer;
  }

  function renderShop(gifts, packs) {
    $('gift-bar').replaceChildren(...gifts.map((g) => {
      const b = el('button', {type: 'button', className: `gift tier-${g.tier}`, textContent: `${g.name} · ${g.coins}`},
        {testid: `gift-${g.id}`});
      b.addEventListener('click', async () => {
        b.disabled = true;
        const answer = show(await client.request('gift:send', {gift: g.id, key: newKey()}));
        b.disabled = false;
        if (answer.ok) $('wallet-balance').textContent = String(answer.balance);
      });
      return b;
    }));
    $('topup-pack').replaceChildren(...packs.map((p) => el('option', {
      value: p.id, textContent: `${p.coins} coins · ${(p.amount_minor / 100).toFixed(2)} ${p.currency.toUpperCase()}`,
    })));
  }

  function pinMessage(event) {
    const box = $('paid-pinned');
    box.textContent = describe(event);
    box.className = `paid-pinned tier-${event.data.tier.colour}`;
    box.hidden = false;
    clearTimeout(pinMessage.timer);
    pinMessage.timer = setTimeout(() => { box.hidden = true; }, event.data.tier.pin_s * 1000);
  }

  // A tier 2 or 3 gift crosses the panel (tier 3 larger); at most a few at once.
  function animate(event) {
    const stage = $('gift-stage');
    if (stage.children.length >= 3) return;
    const d = event.data;
    const burst = el('div', {className: `gift-burst tier-${d.gift.tier}`, textContent: `${d.gift.name} ×${d.combo || d.count}`},
      {testid: 'gift-burst'});
    stage.append(burst);
    burst.addEventListener('animationend', () => burst.remove());
  }

  function addToFeed(events) {
    const list = $('money-feed');
    for (const event of events) {
      const li = el('li', {className: `money-item ${event.type.replace('.', '-')}`, textContent: describe(event)},
        {testid: 'money-item'});
      list.prepend(li);
      if (event.type === 'message.paid') {
        li.classList.add('paid-message', `tier-${event.data.tier.colour}`);
        if (event.data.tier.pin_s) pinMessage(event);
      } else if (event.data.gift && event.data.gift.tier >= 2) {
        li.classList.add('big');
        setTimeout(() => li.classList.remove('big'), 3000);
        animate(event);
      }
      if (studio && event.data.teacher_coins) lessonEarnings += event.data.teacher_coins;
    }
    while (list.children.length > FEED_ITEMS) list.lastElementChild.remove();
    if (studio) $('lesson-earnings').textContent = String(lessonEarnings);
  }

  let boardTimer = null;
  async function renderBoard() {
    boardTimer = null;
    const answer = await client.request('board:get', {scope: 'lesson'});
    if (!answer.ok) return;
    $('board').replaceChildren(...answer.entries.map((e) => el('li', {textContent: `${e.name} · ${e.coins}`},
      {testid: 'board-entry'})));
  }
  const boardSoon = () => { if (!boardTimer) boardTimer = setTimeout(renderBoard, 2000); };

  client.addEventListener('change', ({detail}) => {
    if (detail.what === 'money') {
      addToFeed(detail.events);
      boardSoon();
    }
    if (detail.what === 'reset') {
      refresh();
      renderBoard();
    }
  });

  if (!studio) {
    $('topup').addEventListener('click', async () => {
      const answer = show(await client.request('wallet:checkout', {pack: $('topup-pack').value}));
      if (answer.ok) window.open(answer.url, '_blank');
    });
    // Back from the checkout tab: the webhook has credited the wallet by then.
    window.addEventListener('focus', refresh);
    client.addEventListener('wallet-stale', refresh); // e.g. a course paid from the wallet (sales.js)
    document.addEventListener('visibilitychange', () => document.visibilityState === 'visible' && refresh());
    $('paid-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const text = $('paid-text').value.trim();
      const coins = Number($('paid-coins').value);
      if (!text) return;
      const answer = show(await client.request('message:paid', {text, coins, key: newKey()}));
      if (answer.ok) {
        $('wallet-balance').textContent = String(answer.balance);
        $('paid-text').value = '';
      }
    });
    $('tip-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const coins = Number($('tip-coins').value);
      const message = $('tip-message').value.trim();
      const answer = show(await client.request('tip:send', {coins, key: newKey(), ...(message ? {message} : {})}));
      if (answer.ok) {
        $('wallet-balance').textContent = String(answer.balance);
        $('tip-message').value = '';
      }
    });
  }
}
