// The room page's side of course sales: claiming live coupons, the buy button and the buy sheet.
import {couponOff, couponText, describe, el, formatMoney, newKey, policyText} from '/static/sales_util.js';

const $ = (id) => document.getElementById(id);

/** Wire the buy sheet; returns the hooks sales.js calls (see mountSales). */
export function mountBuySheet(shop, view) {
  const {client} = shop;
  let buyKey = null; // the open sheet's idempotency key: a retry of the same sheet replays, never buys twice

  function owned(courseId) {
    const me = client.me && client.me.user_id;
    return [...shop.orders.values()].some((o) => o.course_id === courseId && o.status === 'paid' && o.buyer === me);
  }

  function tick(phase, course) {
    if (!course) return;
    const button = $('card-buy');
    const mine = owned(course.id);
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

  function couponControl(c) {
    const live = client.room && client.room.status === 'live';
    const held = shop.claims.some((k) => k.coupon.id === c.id);
    const spent = shop.used.get(c.id) || 0;
    const label = held ? 'Claimed' : spent >= c.per_student ? 'Used' : live ? 'Claim' : 'Claim when live';
    const button = el('button', {type: 'button', className: 'small', textContent: label}, {testid: 'coupon-claim'});
    button.disabled = held || spent >= c.per_student || !live || c.claimed >= c.quota;
    button.addEventListener('click', async () => {
      button.disabled = true;
      const answer = shop.showError(await client.request('coupon:claim', {id: c.id}));
      if (answer.ok) {
        shop.claims.push({claim: answer.claim, coupon: answer.coupon});
        c.claimed += 1; // the room's count follows with the next card, within a second
      }
      view.renderCoupons();
    });
    return button;
  }

  function usableClaims(course) {
    return shop.claims.filter(({coupon: c}) => (c.course_id === null || c.course_id === course.id)
      && (c.currency === null || c.currency === course.currency));
  }

  function openSheet() {
    const course = shop.card;
    if (!course) return;
    buyKey = newKey();
    $('buy-title').textContent = course.title;
    $('buy-policy').textContent = policyText(course);
    $('buy-accept').checked = false;
    $('buy-result').textContent = '';
    $('buy-result').dataset.state = '';
    $('buy-pay').disabled = false;
    const usable = usableClaims(course);
    $('buy-coupon').replaceChildren(el('option', {value: '', textContent: 'No coupon'}), ...usable.map(({coupon: c}) =>
      el('option', {value: c.id, textContent: `${c.title} (${couponText(c, course.currency)})`})));
    if (usable.length) $('buy-coupon').value = usable[0].coupon.id;
    renderQuote();
    $('buy-sheet').showModal();
  }

  // The price shown before paying, by the documented order; the server's quote is the one charged.
  function renderQuote() {
    const course = shop.card;
    if (!course) return;
    const base = shop.price(course);
    const chosen = shop.claims.find((k) => k.coupon.id === $('buy-coupon').value);
    const off = chosen ? couponOff(chosen.coupon, base) : 0;
    let text = `To pay: ${shop.priceText(Math.max(0, base - (off || 0)), course.currency)}`;
    if (off === null) text += ' (the coupon needs a higher price)';
    else if (off) text += ` (${formatMoney(off, course.currency)} off with the coupon)`;
    $('buy-quote').textContent = text;
  }

  function showResult(text, state) {
    $('buy-result').textContent = text;
    $('buy-result').dataset.state = state;
  }

  async function pay(event) {
    event.preventDefault();
    const course = shop.card;
    if (!course || !buyKey) return;
    if (!$('buy-accept').checked) return showResult(describe({code: 'policy_not_accepted'}), 'error');
    const method = $('buy-method').value;
    const coupon = $('buy-coupon').value;
    const payload = {course_id: course.id, method, key: buyKey, accept_refund_policy: true};
    if (coupon) payload.coupon_id = coupon;
    $('buy-pay').disabled = true;
    showResult('Paying…', 'busy');
    const answer = await client.request('course:buy', payload);
    if (!answer.ok) {
      showResult(describe(answer.error), 'error');
      // A refusal wrote nothing, so another try may change the coupon or the method; after a timeout the
      // same key finds the order if the first try did go through.
      if (answer.error.code !== 'timeout') buyKey = newKey();
      $('buy-pay').disabled = false;
      return;
    }
    const order = answer.order;
    shop.addOrder(order);
    if (coupon && !answer.replayed) {
      const spent = shop.claims.find((k) => k.coupon.id === coupon);
      shop.claims = shop.claims.filter((k) => k !== spent);
      shop.used.set(coupon, (shop.used.get(coupon) || 0) + 1);
    }
    if (order.status === 'paid') {
      const coins = shop.coins(order.amount_minor, order.currency);
      const paid = coins !== null && method === 'wallet' ? `${coins} coins` : formatMoney(order.amount_minor, order.currency);
      showResult(`Bought ${course.title} for ${paid}. It is yours.`, 'paid');
      client.dispatchEvent(new CustomEvent('wallet-stale'));
    } else {
      showResult('Finish paying in the new tab; your seat is held until then.', 'pending');
      if (answer.url) window.open(answer.url, '_blank');
    }
    buyKey = null;
    view.renderOrders();
    view.renderCoupons();
  }

  $('card-buy').addEventListener('click', openSheet);
  $('buy-coupon').addEventListener('change', renderQuote);
  $('buy-form').addEventListener('submit', pay);
  $('buy-cancel').addEventListener('click', () => $('buy-sheet').close());
  return {tick, couponControl, refreshed() {}};
}
