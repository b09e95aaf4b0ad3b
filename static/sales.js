// Course sales in the pages (docs/protocol.md, "Sales"). Both pages show the pinned course card (price,
// seats left, flash-sale countdown by the server's clock), the live coupons and the orders; the room page
// adds claiming and buying (sales_buy.js), the studio the host's controls (sales_studio.js).
// Text from the server (titles, names) is only set with textContent.
import {mountBuySheet} from '/static/sales_buy.js';
import {mountSalesStudio} from '/static/sales_studio.js';
import {
  clock, couponText, describe, el, formatMoney, newKey, policyText, salePhase,
} from '/static/sales_util.js';

const $ = (id) => document.getElementById(id);
const FEED_ITEMS = 100;
const STATUS = {pending: 'waiting for payment', paid: 'paid', expired: 'expired', refunded: 'refunded'};

/**
 * What the sales modules of one page share: the room client, what `sales:get` and `orders:list` said,
 * and the renderers each module calls after a change.
 */
class Shop {
  constructor(client, studio) {
    this.client = client;
    this.studio = studio;
    this.courses = []; // staff: what this room may sell
    this.claims = []; // students: unused coupon claims [{claim, coupon}]
    this.used = new Map(); // students: coupon id -> claims of it this page spent on orders
    this.coinRates = {}; // currency -> coins per minor unit
    this.orders = new Map(); // id -> Order, oldest first: staff the room's, students their own
  }

  get card() {
    return (this.client.sales && this.client.sales.course) || null;
  }

  /** The sale's phase as the card shows it: a sale of another course than the pinned one is not shown. */
  phase() {
    const state = this.client.sales;
    const course = this.card;
    if (!course || !state.sale || state.sale.course_id !== course.id) return 'none';
    return salePhase(state, this.client.serverNow());
  }

  /** The price on the card now: the sale's while it is open, else the list price. */
  price(course) {
    const sale = this.client.sales.sale;
    return this.phase() === 'open' ? Math.min(sale.price_minor, course.price_minor) : course.price_minor;
  }

  coins(minor, currency) {
    return this.coinRates[currency] ? minor * this.coinRates[currency] : null;
  }

  priceText(minor, currency) {
    const coins = this.coins(minor, currency);
    return coins === null ? formatMoney(minor, currency) : `${formatMoney(minor, currency)} · ${coins} coins`;
  }

  showError(answer) {
    $('sales-error').textContent = answer.ok ? '' : describe(answer.error);
    return answer;
  }

  addOrder(order) {
    this.orders.delete(order.id); // re-inserted last: the newest change shows first
    this.orders.set(order.id, order);
    while (this.orders.size > 500) this.orders.delete(this.orders.keys().next().value);
  }
}

export function mountSales(client, studio, {ask} = {}) {
  const shop = new Shop(client, studio);
  let ticker = null;
  let part = null; // the page's own module: {tick(phase, course), couponControl(coupon), refreshed()}

  async function refresh() {
    const [got, listed] = await Promise.all([client.request('sales:get', {}), client.request('orders:list', {})]);
    if (got.ok) {
      shop.coinRates = got.coin_rates || {};
      shop.courses = got.courses || [];
      shop.claims = got.claims || [];
    }
    if (listed.ok) {
      shop.orders.clear();
      for (const o of [...listed.orders].reverse()) shop.orders.set(o.id, o);
    }
    render();
    renderOrders();
    part.refreshed();
  }

  function render() {
    const course = shop.card;
    $('card-empty').hidden = Boolean(course);
    $('card').hidden = !course;
    renderCoupons();
    if (course) {
      $('card-title').textContent = course.title;
      $('card-description').textContent = course.description || '';
      const cover = $('card-cover');
      if (course.cover_url && cover.getAttribute('src') !== course.cover_url) cover.src = course.cover_url;
      cover.hidden = !course.cover_url;
      $('card-policy').textContent = policyText(course);
    }
    tick();
    const moving = ['scheduled', 'countdown', 'open'].includes(salePhase(client.sales, client.serverNow()));
    if (moving && !ticker) ticker = setInterval(tick, 250);
    if (!moving && ticker) {
      clearInterval(ticker);
      ticker = null;
    }
  }

  // What moves with time: price, sale line, countdown, seats, and the page's buttons.
  function tick() {
    const course = shop.card;
    const phase = shop.phase();
    if (course) {
      const sale = client.sales.sale;
      const now = client.serverNow();
      $('card-price').textContent = shop.priceText(shop.price(course), course.currency);
      $('card-list-price').textContent = formatMoney(course.price_minor, course.currency);
      $('card-list-price').hidden = phase !== 'open';
      const line = $('card-sale');
      line.dataset.state = phase;
      line.hidden = phase === 'none';
      line.textContent = saleLine(phase, sale, now);
      $('card-countdown').textContent = phase === 'countdown' ? clock(sale.opens_at - now) : '';
      $('card-countdown').hidden = phase !== 'countdown';
      const seats = $('card-seats');
      if (phase !== 'none' && phase !== 'ended') {
        seats.textContent = `${client.sales.seats_left ?? sale.seats} of ${sale.seats} seats left`;
      } else seats.textContent = course.seats_left === null ? '' : `${course.seats_left} seats left`;
      seats.hidden = !seats.textContent;
    }
    part.tick(phase, course);
  }

  function saleLine(phase, sale, now) {
    const price = sale ? formatMoney(sale.price_minor, sale.currency) : '';
    switch (phase) {
      case 'scheduled': {
        const at = new Date(sale.opens_at - client.clockOffset);
        return `Flash sale at ${price} from ${at.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})}`;
      }
      case 'countdown': return `Flash sale at ${price} opens in ${clock(sale.opens_at - now)}`;
      case 'open': return `Flash sale · ends in ${clock(sale.ends_at - now)}`;
      case 'sold_out': return 'Flash sale sold out';
      case 'ended': return 'The flash sale has ended';
      default: return '';
    }
  }

  function renderCoupons() {
    const list = (client.sales && client.sales.coupons) || [];
    const currency = shop.card ? shop.card.currency : 'usd';
    $('coupons').replaceChildren(...list.map((c) => {
      const li = el('li', {className: 'coupon'}, {testid: 'coupon', id: c.id});
      li.append(
        el('span', {className: 'title', textContent: c.title}),
        el('span', {className: 'off', textContent: couponText(c, currency)}),
        el('span', {className: 'quota', textContent: `${c.claimed}/${c.quota} claimed`}, {testid: 'coupon-quota'}),
        part.couponControl(c),
      );
      return li;
    }));
  }

  function orderText(o) {
    const course = shop.courses.find((c) => c.id === o.course_id) || (shop.card && shop.card.id === o.course_id ? shop.card : null);
    const how = o.method === 'wallet' ? 'wallet' : 'card';
    const refunded = o.refunded_minor ? `, ${formatMoney(o.refunded_minor, o.currency)} refunded` : '';
    const who = studio ? `${o.buyer_name} · ` : '';
    return `${who}${course ? course.title : o.course_id} · ${formatMoney(o.amount_minor, o.currency)} `
      + `(${STATUS[o.status] || o.status}, ${how}${refunded})`;
  }

  function canRefund(o) {
    if (o.status !== 'paid' || o.amount_minor <= o.refunded_minor || !ask) return false;
    return studio || client.serverNow() < o.paid_at + o.refund_days * 86_400_000;
  }

  function renderOrders() {
    const shown = [...shop.orders.values()].slice(-FEED_ITEMS).reverse();
    $('orders').replaceChildren(...shown.map((o) => {
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
      const all = [...shop.orders.values()];
      const net = new Map(); // currency -> paid minus refunded
      for (const o of all) {
        if (o.status === 'paid' || o.status === 'refunded') net.set(o.currency, (net.get(o.currency) || 0) + o.amount_minor - o.refunded_minor);
      }
      const revenue = [...net].map(([cur, minor]) => formatMoney(minor, cur)).join(' + ') || formatMoney(0, 'usd');
      $('orders-summary').textContent = `${all.filter((o) => o.status === 'paid').length} paid · ${revenue}`;
    }
    tick();
  }

  async function refund(order) {
    const text = studio
      ? `Refund ${order.buyer_name}'s order in full? The money goes back the way it came.`
      : 'Ask for a refund of this order? You lose access to the course.';
    const reason = await ask(text, true);
    if (reason === null) return;
    const answer = shop.showError(await client.request('order:refund', {
      order_id: order.id, key: newKey(), reason: reason || (studio ? 'Refunded by staff' : 'Asked by the student'),
    }));
    if (answer.ok) {
      shop.addOrder(answer.order);
      renderOrders();
      client.dispatchEvent(new CustomEvent('wallet-stale'));
    }
  }

  const view = {render, renderCoupons, renderOrders, tick, refresh};
  part = studio ? mountSalesStudio(shop, view) : mountBuySheet(shop, view);

  client.addEventListener('sales-order', ({detail: order}) => {
    shop.addOrder(order);
    renderOrders();
  });
  client.addEventListener('change', ({detail}) => {
    if (detail.what === 'sales') render();
    else if (detail.what === 'room' || detail.what === 'conn') {
      renderCoupons();
      tick();
    }
  });
  // Every join, also one that recovered missed room events: orders (not numbered) are asked for again.
  client.addEventListener('joined', refresh);
}
