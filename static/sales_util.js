// Course sales: formatting, prices and sale phases shared by the room and studio pages (see sales.js).
import {describeError} from '/static/client.js';

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

/** Readable text for a refused sales request. */
export const describe = (error) => MESSAGES[error.code] || describeError(error);

/** createElement with properties (`textContent`, `className`, …) and `data-*` attributes. */
export function el(tag, props = {}, data = {}) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, data);
  return node;
}

/** A fresh idempotency key. */
export function newKey() {
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
  try {
    return new Intl.NumberFormat(undefined, {style: 'currency', currency: currency.toUpperCase()})
      .format(minor / 10 ** currencyDigits(currency));
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
export function clock(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

/** Where the room's flash sale is at `now`: none, scheduled, countdown, open, sold_out or ended. */
export function salePhase(state, now) {
  const sale = state && state.sale;
  if (!sale) return 'none';
  if (sale.stopped_at !== null || now >= sale.ends_at) return 'ended';
  if (now < sale.starts_at) return 'scheduled';
  if (now < sale.opens_at) return 'countdown';
  return state.seats_left === 0 ? 'sold_out' : 'open';
}

/** A sale in one of these phases still runs: it can be stopped, and no other can start. */
export const RUNNING = ['scheduled', 'countdown', 'open', 'sold_out'];

/** What a coupon takes off `base` (gifting/pricing.py), or null when it does not apply. */
export function couponOff(coupon, base) {
  if (coupon.kind === 'fixed') return Math.min(base, coupon.amount_off);
  if (coupon.kind === 'percent') return Math.floor((base * coupon.percent_off) / 100);
  return base >= coupon.min_spend ? Math.min(base, coupon.amount_off) : null;
}

export function couponText(c, currency) {
  const cur = c.currency || currency;
  if (c.kind === 'percent') return `${c.percent_off}% off`;
  if (c.kind === 'fixed') return `${formatMoney(c.amount_off, cur)} off`;
  return `Spend ${formatMoney(c.min_spend, cur)}, save ${formatMoney(c.amount_off, cur)}`;
}

export function policyText(course) {
  const p = course.refund_policy;
  return `Refundable within ${p.days} days if less than ${p.max_consumed_pct}% of the course is used.`;
}
