// The studio's side of course sales: the room's courses to pin, the flash-sale and coupon forms, and
// stopping coupons. The orders feed and the card itself are sales.js's.
import {RUNNING, el, formatMoney, parseMinor, salePhase} from '/static/sales_util.js';

const $ = (id) => document.getElementById(id);

/** Wire the studio's sales controls; returns the hooks sales.js calls (see mountSales). */
export function mountSalesStudio(shop, view) {
  const {client} = shop;

  // Acks carry the new state at once; the `sales.card` event that follows says the same.
  async function act(event, payload) {
    const answer = shop.showError(await client.request(event, payload));
    if (answer.ok && answer.state) client.setSales(answer.state);
    return answer;
  }

  function renderCourses() {
    const pinned = shop.card;
    $('course-list').replaceChildren(...shop.courses.map((c) => {
      const li = el('li', {className: 'course'}, {testid: 'course', id: c.id});
      const isPinned = Boolean(pinned) && pinned.id === c.id;
      const button = el('button', {type: 'button', className: 'small', textContent: isPinned ? 'Pinned' : 'Pin'},
        {testid: 'course-pin'});
      button.disabled = isPinned;
      button.addEventListener('click', async () => {
        button.disabled = true;
        await act('sales:pin', {course_id: c.id});
        renderCourses();
      });
      li.append(el('span', {className: 'title', textContent: c.title}),
        el('span', {className: 'price', textContent: formatMoney(c.price_minor, c.currency)}), button);
      return li;
    }));
    $('course-list-empty').hidden = shop.courses.length > 0;
  }

  // Whatever course it is for: a running sale blocks a new one and can be ended.
  function tick() {
    const running = RUNNING.includes(salePhase(client.sales, client.serverNow()));
    $('sale-start').disabled = !shop.card || running;
    $('sale-stop').disabled = !running;
    $('unpin').disabled = !shop.card;
  }

  function couponControl(c) {
    const stop = el('button', {type: 'button', className: 'small', textContent: 'Stop'}, {testid: 'coupon-stop'});
    stop.addEventListener('click', async () => {
      stop.disabled = true;
      await act('coupon:stop', {id: c.id});
    });
    return stop;
  }

  const invalid = (message) => shop.showError({ok: false, error: {code: 'invalid', message}});

  async function startSale(event) {
    event.preventDefault();
    const course = shop.card;
    if (!course) return shop.showError({ok: false, error: {code: 'no_card'}});
    const price = parseMinor($('sale-price').value, course.currency);
    if (price === null) return invalid('Enter the sale price, e.g. 9.99');
    await act('sales:start', {
      price_minor: price,
      countdown_s: Number($('sale-countdown').value),
      duration_s: Number($('sale-duration').value) * 60,
      seats: Number($('sale-seats').value),
      per_student_limit: Number($('sale-limit').value),
    });
  }

  function couponFields() {
    const kind = $('coupon-kind').value;
    $('coupon-amount-label').hidden = kind === 'percent';
    $('coupon-percent-label').hidden = kind !== 'percent';
    $('coupon-min-label').hidden = kind !== 'threshold';
  }

  async function createCoupon(event) {
    event.preventDefault();
    const course = shop.card;
    const currency = course ? course.currency : 'usd';
    const kind = $('coupon-kind').value;
    const payload = {
      title: $('coupon-title').value.trim(), kind,
      quota: Number($('coupon-quota').value), per_student: Number($('coupon-per-student').value),
    };
    if (kind === 'percent') payload.percent_off = Number($('coupon-percent').value);
    else {
      payload.currency = currency;
      payload.amount_off = parseMinor($('coupon-amount').value, currency);
      if (kind === 'threshold') payload.min_spend = parseMinor($('coupon-min').value, currency);
      if (payload.amount_off === null || payload.min_spend === null) return invalid('Enter amounts such as 5 or 4.99');
    }
    if ($('coupon-this-course').checked && course) payload.course_id = course.id;
    const answer = await act('coupon:create', payload);
    if (answer.ok) $('coupon-title').value = '';
  }

  $('unpin').addEventListener('click', () => act('sales:unpin', {}));
  $('sale-form').addEventListener('submit', startSale);
  $('sale-stop').addEventListener('click', () => act('sales:stop', {}));
  $('coupon-form').addEventListener('submit', createCoupon);
  $('coupon-kind').addEventListener('change', couponFields);
  $('courses-refresh').addEventListener('click', view.refresh); // courses the host added since the page opened
  couponFields();
  client.addEventListener('change', ({detail}) => detail.what === 'sales' && renderCourses());
  return {tick, couponControl, refreshed: renderCourses};
}
