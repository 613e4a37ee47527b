// walhook console and portal: refresh the page's live part every few
// seconds without a reload, and ask before destructive actions. No inline
// script anywhere: this file is the only one, served from the same origin.
(function () {
  'use strict';
  document.addEventListener('submit', function (e) {
    var msg = e.target.getAttribute('data-confirm');
    if (msg && !window.confirm(msg)) { e.preventDefault(); }
  });
  var live = document.getElementById('live');
  if (!live || !window.fetch) { return; }
  var every = parseInt(live.getAttribute('data-refresh'), 10) || 3000;
  var status = document.getElementById('live-status');
  var busy = false;
  function tick() {
    if (busy || document.hidden) { return; }
    var a = document.activeElement;
    // Do not pull a button or field from under the keyboard.
    if (a && a !== document.body && live.contains(a) && a.tagName !== 'SUMMARY') { return; }
    busy = true;
    var open = [];
    live.querySelectorAll('details[open][id]').forEach(function (d) { open.push(d.id); });
    fetch(window.location.href, { headers: { 'X-Walhook-Live': '1' }, credentials: 'same-origin', cache: 'no-store' })
      .then(function (r) {
        if (!r.ok) { throw new Error('HTTP ' + r.status); }
        return r.text();
      })
      .then(function (html) {
        var focused = a && a.tagName === 'SUMMARY' && a.parentNode ? a.parentNode.id : '';
        live.innerHTML = html;
        open.forEach(function (id) { var d = document.getElementById(id); if (d) { d.open = true; } });
        if (focused) { var f = document.getElementById(focused); if (f) { f.querySelector('summary').focus(); } }
        if (status) { status.textContent = 'Updated ' + new Date().toLocaleTimeString(); }
      })
      .catch(function (err) {
        if (status) { status.textContent = 'Live updates paused (' + err.message + '); retrying.'; }
      })
      .then(function () { busy = false; });
  }
  window.setInterval(tick, every);
})();
