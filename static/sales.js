// Course sales in the pages (docs/protocol.md, "Sales"). Room page: the pinned course card with its price,
// seats left and flash-sale countdown, live coupons to claim, the buy sheet and the student's orders.
// Studio: pin and unpin, start and stop a flash sale, create and stop live coupons, the orders feed.
// Text from the server (titles, names) is only set with textContent.
import {describeError} from '/static/client.js';

const $ = (id) => document.getElementById(id);
const FEED_ITEMS = 100;

const MESSAGES = {
  sold_out: 'Sold out: every seat of this sale is taken.',
  limit_reached: 'You already have an order in this sale.',
  already_owned: 'You already own this course.',
  policy_not_accepted: 'Please accept the refund policy first.',
  not_on_sale: 'This course is not on sale in this lesson.',
  coupon_not_claimed: 'Claim that coupon first.',
  coupon_not_applicable: 'That coupon does not apply to this price.',
  coupon_used: 'That coupon was already used.',
  coupon_exhausted: 'All of these coupons have been claimed.',
  coupon_stopped: 'This coupon is no longer offered.',
  claim_limit: 'You have claimed this coupon as often as you may.',
  not_live: 'Coupons can be claimed only while the lesson is live.',
  no_card: 'Pin a course first.',
  sale_running: 'A flash sale is already scheduled or running.',
  insufficient_funds: 'Not enough coins in your wallet: top up first.',
  refund_window_closed: 'The refund period of this order is over.',
  refund_exceeds_paid: 'That is more than what is left to refund.',
  order_expired: 'This order expired before it was paid.',
  minor: 'Purchases are not available on this account.',
};
const describe = (error) => MESSAGES[error.code] || describeError(error);

function el(tag, props = {}, data = {}) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, data);
  return node;
}

function newKey() {
  return crypto.randomUUID().replaceAll('-', '');
}

function currencyDigits(currency) {
  try {
    return new Intl.NumberFormat('en', {style: 'currency', currency}).resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/** `1234, 'usd'` → `$12.34` (display only: amounts stay integer minor units everywhere else). */
export function formatMoney(minor, currency) {
  const digits = currencyDigits(currency);
  try {
    return new Intl.NumberFormat(undefined, {style: 'currency', currency: currency.toUpperCase()})
      .format(minor / 10 ** digits);
  } catch {
    return `${minor} ${currency}`;
  }
}

/** `'12.5'` → `1250` minor units, parsed as text so no float is ever rounded; null if not a price. */
export function parseMinor(text, currency) {
  const digits = currencyDigits(currency);
  const match = /^\s*(\d{1,9})(?:[.,](\d*))?\s*$/.exec(text);
  if (!match || (match[2] || '').length > digits) return null;
  return Number(match[1]) * 10 ** digits + Number((match[2] || '').padEnd(digits, '0') || 0);
}

/** `m:ss` (or `h:mm:ss`) until `ms` has passed. */
function clock(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

/** Where a flash sale is at `now`: none, scheduled, countdown, open, sold_out or ended. */
export function salePhase(state, now) {
  const sale = state && state.sale;
  if (!sale) return 'none';
  if (sale.stopped_at !== null || now >= sale.ends_at) return 'ended';
  if (now < sale.starts_at) return 'scheduled';
  if (now < sale.opens_at) return 'countdown';
  return state.seats_left === 0 ? 'sold_out' : 'open';
}

/** What a coupon takes off `base` (gifting/pricing.py), or null when it does not apply. */
function couponOff(coupon, base) {
  if (coupon.kind === 'fixed') return Math.min(base, coupon.amount_off);
  if (coupon.kind === 'percent') return Math.floor((base * coupon.percent_off) / 100);
  return base >= coupon.min_spend ? Math.min(base, coupon.amount_off) : null;
}

function couponText(c, currency) {
  const cur = c.currency || currency;
  if (c.kind === 'percent') return `${c.percent_off}% off`;
  if (c.kind === 'fixed') return `${formatMoney(c.amount_off, cur)} off`;
  return `Spend ${formatMoney(c.min_spend, cur)}, save ${formatMoney(c.amount_off, cur)}`;
}

const STATUS = {pending: 'waiting for payment', paid: 'paid', expired: 'expired', refunded: 'refunded'};

export function mountSales(client, studio, {ask} = {}) {
  let courses = []; // staff: what this room may sell
  let claims = []; // students: unused claims [{claim, coupon}]
  const used = new Map(); // coupon id -> claims of it this page spent on orders
  let coinRates = {};
  const orders = new Map(); // id -> Order: staff the room's, students their own
  let buyKey = null; // the open buy sheet's idempotency key: a retry of the same sheet replays
  let ticker = null;

  const card = () => client.sales && client.sales.course;
  const showError = (answer) => {
    $('sales-error').textContent = answer.ok ? '' : describe(answer.error);
    return answer;
  };
  const coins = (minor, currency) => (coinRates[currency] ? minor * coinRates[currency] : null);
  const priceText = (minor, currency) => {
    const c = coins(minor, currency);
    return c === null ? formatMoney(minor, currency) : `${formatMoney(minor, currency)} · ${c} coins`;
  };

  async function refresh() {
    const [got, listed] = await Promise.all([client.request('sales:get', {}), client.request('orders:list', {})]);
    if (got.ok) {
      coinRates = got.coin_rates || {};
      courses = got.courses || [];
      claims = got.claims || [];
    }
    if (listed.ok) {
      orders.clear();
      for (const o of [...listed.orders].reverse()) orders.set(o.id, o);
    }
    render();
    renderOrders();
    if (studio) renderCourses();
  }

  // ---- the card (both pages) ----

  function render() {
    const state = client.sales;
    const course = card();
    $('card-empty').hidden = Boolean(course);
    $('card').hidden = !course;
    renderCoupons();
    if (!course) return stopTicker();
    $('card-title').textContent = course.title;
    $('card-description').textContent = course.description || '';
    const cover = $('card-cover');
    if (course.cover_url && cover.getAttribute('src') !== course.cover_url) cover.src = course.cover_url;
    cover.hidden = !course.cover_url;
    $('card-policy').textContent = policyText(course);
    tick();
    const phase = salePhase(state, client.serverNow());
    if (phase === 'scheduled' || phase === 'countdown' || phase === 'open') startTicker();
    else stopTicker();
  }

  function policyText(course) {
    const p = course.refund_policy;
    return `Refundable within ${p.days} days if less than ${p.max_consumed_pct}% of the course is used.`;
  }

  // Everything on the card that moves with time: price, sale line, seats, the buy button.
  function tick() {
    const state = client.sales;
    const course = card();
    if (!course) return;
    const now = client.serverNow();
    const phase = salePhase(state, now);
    const sale = state.sale;
    const onSale = phase === 'open' && sale.course_id === course.id;
    const price = onSale ? Math.min(sale.price_minor, course.price_minor) : course.price_minor;
    $('card-price').textContent = priceText(price, course.currency);
    $('card-list-price').textContent = formatMoney(course.price_minor, course.currency);
    $('card-list-price').hidden = !onSale;

    const line = $('card-sale');
    line.dataset.state = phase;
    line.hidden = phase === 'none';
    if (phase === 'scheduled') {
      line.textContent = `Flash sale at ${formatMoney(sale.price_minor, sale.currency)} from ${
        new Date(sale.opens_at - client.clockOffset).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})}`;
    } else if (phase === 'countdown') {
      line.textContent = `Flash sale at ${formatMoney(sale.price_minor, sale.currency)} opens in ${clock(sale.opens_at - now)}`;
    } else if (phase === 'open') line.textContent = `Flash sale · ends in ${clock(sale.ends_at - now)}`;
    else if (phase === 'sold_out') line.textContent = 'Flash sale sold out';
    else line.textContent = 'The flash sale has ended';
    $('card-countdown').textContent = phase === 'countdown' ? clock(sale.opens_at - now) : '';
    $('card-countdown').hidden = phase !== 'countdown';

    const seats = $('card-seats');
    if (phase === 'countdown' || phase === 'open' || phase === 'sold_out' || phase === 'scheduled') {
      seats.textContent = `${state.seats_left ?? sale.seats} of ${sale.seats} seats left`;
      seats.hidden = false;
    } else {
      seats.textContent = course.seats_left === null ? '' : `${course.seats_left} seats left`;
      seats.hidden = course.seats_left === null;
    }
    if (studio) renderSaleButtons(phase);
    else renderBuyButton(phase, course);
  }

  function owned(courseId) {
    return [...orders.values()].some((o) => o.course_id === courseId && o.status === 'paid' && o.buyer === client.me.user_id);
  }

  function renderBuyButton(phase, course) {
    const button = $('card-buy');
    const mine = client.me && owned(course.id);
    $('card-owned').hidden = !mine;
    button.hidden = mine;
    const grants = (client.me && client.me.grants) || {};
    let label = 'Buy now';
    let disabled = client.conn.state !== 'live' || !grants.buy;
    if (phase === 'countdown') {
      label = 'Opens soon';
      disabled = true;
    } else if (phase === 'sold_out' || (phase !== 'open' && course.seats_left === 0)) {
      label = 'Sold out';
      disabled = true;
    }
    button.textContent = label;
    button.disabled = disabled;
  }

  function startTicker() {
    if (!ticker) ticker = setInterval(tick, 250);
  }
  function stopTicker() {
    clearInterval(ticker);
    ticker = null;
  }

  // ---- coupons ----

  function renderCoupons() {
    const state = client.sales;
    const list = (state && state.coupons) || [];
    const course = card();
    const live = client.room && client.room.status === 'live';
    $('coupons').replaceChildren(...list.map((c) => {
      const li = el('li', {className: 'coupon'}, {testid: 'coupon', id: c.id});
      li.append(
        el('span', {className: 'title', textContent: c.title}),
        el('span', {className: 'off', textContent: couponText(c, course ? course.currency : 'usd')}),
        el('span', {className: 'quota', textContent: `${c.claimed}/${c.quota} claimed`}, {testid: 'coupon-quota'}),
      );
      if (studio) {
        const stop = el('button', {type: 'button', className: 'small', textContent: 'Stop'}, {testid: 'coupon-stop'});
        stop.addEventListener('click', async () => {
          stop.disabled = true;
          showError(await client.request('coupon:stop', {id: c.id}));
        });
        li.append(stop);
      } else {
        const held = claims.filter((k) => k.coupon.id === c.id).length;
        const spent = used.get(c.id) || 0;
        const label = held ? 'Claimed' : spent >= c.per_student ? 'Used' : live ? 'Claim' : 'Claim when live';
        const button = el('button', {type: 'button', className: 'small', textContent: label}, {testid: 'coupon-claim'});
        button.disabled = Boolean(held) || spent >= c.per_student || !live || c.claimed >= c.quota;
        button.addEventListener('click', () => claim(c, button));
        li.append(button);
      }
      return li;
    }));
  }

  async function claim(coupon, button) {
    button.disabled = true;
    const answer = showError(await client.request('coupon:claim', {id: coupon.id}));
    if (answer.ok) {
      claims.push({claim: answer.claim, coupon: answer.coupon});
      coupon.claimed += 1; // the room's count follows with the next card, within a second
    }
    renderCoupons();
  }

  // ---- buying (room page) ----

  function usableClaims(course) {
    return claims.filter(({coupon: c}) => (c.course_id === null || c.course_id === course.id)
      && (c.currency === null || c.currency === course.currency));
  }

  function openSheet() {
    const course = card();
    if (!course) return;
    buyKey = newKey();
    $('buy-title').textContent = course.title;
    $('buy-policy').textContent = policyText(course);
    $('buy-accept').checked = false;
    $('buy-result').textContent = '';
    $('buy-result').dataset.state = '';
    $('buy-pay').disabled = false;
    const select = $('buy-coupon');
    const usable = usableClaims(course);
    select.replaceChildren(el('option', {value: '', textContent: 'No coupon'}),
      ...usable.map(({coupon: c}) => el('option', {value: c.id, textContent: `${c.title} (${couponText(c, course.currency)})`})));
    if (usable.length) select.value = usable[0].coupon.id;
    renderQuote();
    $('buy-sheet').showModal();
  }

  // The price shown before paying, by the documented order; the server's quote is the one charged.
  function renderQuote() {
    const course = card();
    if (!course) return;
    const state = client.sales;
    const onSale = salePhase(state, client.serverNow()) === 'open' && state.sale.course_id === course.id;
    const base = onSale ? Math.min(state.sale.price_minor, course.price_minor) : course.price_minor;
    const chosen = claims.find((k) => k.coupon.id === $('buy-coupon').value);
    const off = chosen ? couponOff(chosen.coupon, base) : 0;
    const total = Math.max(0, base - (off || 0));
    let text = `To pay: ${priceText(total, course.currency)}`;
    if (off === null) text += ' (the coupon needs a higher price)';
    else if (off) text += ` (${formatMoney(off, course.currency)} off with the coupon)`;
    $('buy-quote').textContent = text;
  }

  async function pay(event) {
    event.preventDefault();
    const course = card();
    if (!course) return;
    const result = $('buy-result');
    if (!$('buy-accept').checked) {
      result.textContent = MESSAGES.policy_not_accepted;
      result.dataset.state = 'error';
      return;
    }
    const method = $('buy-method').value;
    const coupon = $('buy-coupon').value;
    const payload = {course_id: course.id, method, key: buyKey, accept_refund_policy: true, ...(coupon ? {coupon_id: coupon} : {})};
    $('buy-pay').disabled = true;
    result.textContent = 'Paying…';
    result.dataset.state = 'busy';
    const answer = await client.request('course:buy', payload);
    if (!answer.ok) {
      result.textContent = describe(answer.error);
      result.dataset.state = 'error';
      // A refusal wrote nothing: a new attempt may change the coupon or the method.
      if (answer.error.code !== 'timeout') buyKey = newKey();
      $('buy-pay').disabled = false;
      return;
    }
    const order = answer.order;
    orders.set(order.id, order);
    if (order.status === 'paid') {
      if (coupon) {
        const spent = claims.find((k) => k.coupon.id === coupon);
        claims = claims.filter((k) => k !== spent);
        used.set(coupon, (used.get(coupon) || 0) + 1);
      }
      const paid = coins(order.amount_minor, order.currency);
      result.textContent = `Bought ${course.title} for ${paid === null || method !== 'wallet'
        ? formatMoney(order.amount_minor, order.currency) : `${paid} coins`}. It is yours.`;
      result.dataset.state = 'paid';
      client.dispatchEvent(new CustomEvent('wallet-stale'));
    } else {
      result.textContent = 'Finish paying in the new tab; your seat is held until then.';
      result.dataset.state = 'pending';
      if (answer.url) window.open(answer.url, '_blank');
    }
    buyKey = null;
    renderOrders();
    renderCoupons();
    tick();
  }

  // ---- orders (both pages) ----

  function orderText(o) {
    const course = courses.find((c) => c.id === o.course_id) || (card() && card().id === o.course_id ? card() : null);
    const title = course ? course.title : o.course_id;
    const how = o.method === 'wallet' ? 'wallet' : 'card';
    const refunded = o.refunded_minor ? `, ${formatMoney(o.refunded_minor, o.currency)} refunded` : '';
    const who = studio ? `${o.buyer_name} · ` : '';
    return `${who}${title} · ${formatMoney(o.amount_minor, o.currency)} (${STATUS[o.status] || o.status}, ${how}${refunded})`;
  }

  function canRefund(o) {
    if (o.status !== 'paid' || o.amount_minor <= o.refunded_minor) return false;
    return studio || client.serverNow() < o.paid_at + o.refund_days * 86_400_000;
  }

  function renderOrders() {
    const list = $('orders');
    const shown = [...orders.values()].slice(-FEED_ITEMS).reverse();
    list.replaceChildren(...shown.map((o) => {
      const li = el('li', {className: `order ${o.status}`}, {testid: 'order-item', id: o.id, status: o.status});
      li.append(el('span', {textContent: orderText(o)}, {testid: 'order-text'}));
      if (canRefund(o)) {
        const button = el('button', {type: 'button', className: 'small', textContent: studio ? 'Refund' : 'Ask for a refund'},
          {testid: 'order-refund'});
        button.addEventListener('click', () => refund(o));
        li.append(button);
      }
      return li;
    }));
    if (studio) {
      const paid = [...orders.values()].filter((o) => o.status === 'paid' || o.status === 'refunded');
      const byCurrency = new Map();
      for (const o of paid) byCurrency.set(o.currency, (byCurrency.get(o.currency) || 0) + o.amount_minor - o.refunded_minor);
      const revenue = [...byCurrency].map(([cur, minor]) => formatMoney(minor, cur)).join(' + ') || formatMoney(0, 'usd');
      $('orders-summary').textContent = `${paid.length} paid · ${revenue}`;
    }
    const course = card();
    if (course && !studio) tick();
  }

  async function refund(order) {
    if (!ask) return;
    const text = studio
      ? `Refund ${order.buyer_name}'s order in full? The money goes back the way it came.`
      : 'Ask for a refund of this order? You lose access to the course.';
    const reason = await ask(text, true);
    if (reason === null) return;
    const answer = showError(await client.request('order:refund', {
      order_id: order.id, key: newKey(), reason: reason || (studio ? 'Refunded by staff' : 'Asked by the student'),
    }));
    if (answer.ok) {
      orders.set(answer.order.id, answer.order);
      renderOrders();
      client.dispatchEvent(new CustomEvent('wallet-stale'));
    }
  }

  client.addEventListener('sales-order', ({detail: order}) => {
    orders.delete(order.id); // moves to the end: newest first in the list
    orders.set(order.id, order);
    while (orders.size > 500) orders.delete(orders.keys().next().value);
    renderOrders();
  });

  // ---- studio controls ----

  function renderCourses() {
    const pinned = card();
    $('course-list').replaceChildren(...courses.map((c) => {
      const li = el('li', {className: 'course'}, {testid: 'course', id: c.id});
      li.append(el('span', {className: 'title', textContent: c.title}),
        el('span', {className: 'price', textContent: formatMoney(c.price_minor, c.currency)}));
      const isPinned = pinned && pinned.id === c.id;
      const button = el('button', {type: 'button', className: 'small', textContent: isPinned ? 'Pinned' : 'Pin'},
        {testid: 'course-pin'});
      button.disabled = isPinned;
      button.addEventListener('click', async () => {
        button.disabled = true;
        const answer = showError(await client.request('sales:pin', {course_id: c.id}));
        if (answer.ok) client.setSales(answer.state);
        renderCourses();
      });
      li.append(button);
      return li;
    }));
    $('course-list-empty').hidden = courses.length > 0;
    renderSaleButtons(salePhase(client.sales, client.serverNow()));
  }

  function renderSaleButtons(phase) {
    const running = ['scheduled', 'countdown', 'open', 'sold_out'].includes(phase);
    $('sale-start').disabled = !card() || running;
    $('sale-stop').disabled = !running;
    $('unpin').disabled = !card();
  }

  async function startSale(event) {
    event.preventDefault();
    const course = card();
    if (!course) return showError({ok: false, error: {code: 'no_card'}});
    const price = parseMinor($('sale-price').value, course.currency);
    if (price === null) return showError({ok: false, error: {code: 'invalid', message: 'Enter the sale price, e.g. 9.99'}});
    const payload = {
      price_minor: price,
      countdown_s: Number($('sale-countdown').value),
      duration_s: Number($('sale-duration').value) * 60,
      seats: Number($('sale-seats').value),
      per_student_limit: Number($('sale-limit').value),
    };
    const answer = showError(await client.request('sales:start', payload));
    if (answer.ok) client.setSales(answer.state);
  }

  function couponFields() {
    const kind = $('coupon-kind').value;
    $('coupon-amount-label').hidden = kind === 'percent';
    $('coupon-percent-label').hidden = kind !== 'percent';
    $('coupon-min-label').hidden = kind !== 'threshold';
  }

  async function createCoupon(event) {
    event.preventDefault();
    const course = card();
    const currency = course ? course.currency : 'usd';
    const kind = $('coupon-kind').value;
    const payload = {title: $('coupon-title').value.trim(), kind, quota: Number($('coupon-quota').value),
      per_student: Number($('coupon-per-student').value)};
    if (kind === 'percent') payload.percent_off = Number($('coupon-percent').value);
    else {
      payload.amount_off = parseMinor($('coupon-amount').value, currency);
      payload.currency = currency;
      if (kind === 'threshold') payload.min_spend = parseMinor($('coupon-min').value, currency);
      if (payload.amount_off === null || payload.min_spend === null) {
        return showError({ok: false, error: {code: 'invalid', message: 'Enter amounts such as 5 or 4.99'}});
      }
    }
    if ($('coupon-this-course').checked && course) payload.course_id = course.id;
    const answer = showError(await client.request('coupon:create', payload));
    if (answer.ok) $('coupon-title').value = '';
  }

  // ---- wiring ----

  client.addEventListener('change', ({detail}) => {
    if (detail.what === 'sales') {
      render();
      if (studio) renderCourses();
    } else if (detail.what === 'room' || detail.what === 'conn') {
      renderCoupons();
      tick();
    }
  });
  // Every join, also one that recovered missed room events: orders (not numbered) are asked for again.
  client.addEventListener('joined', refresh);

  if (studio) {
    $('unpin').addEventListener('click', async () => {
      const answer = showError(await client.request('sales:unpin', {}));
      if (answer.ok) client.setSales(answer.state);
    });
    $('sale-form').addEventListener('submit', startSale);
    $('sale-stop').addEventListener('click', async () => {
      const answer = showError(await client.request('sales:stop', {}));
      if (answer.ok) client.setSales(answer.state);
    });
    $('coupon-form').addEventListener('submit', createCoupon);
    $('courses-refresh').addEventListener('click', refresh); // courses the host added since
    $('coupon-kind').addEventListener('change', couponFields);
    couponFields();
  } else {
    $('card-buy').addEventListener('click', openSheet);
    $('buy-coupon').addEventListener('change', renderQuote);
    $('buy-form').addEventListener('submit', pay);
    $('buy-cancel').addEventListener('click', () => $('buy-sheet').close());
  }
}
