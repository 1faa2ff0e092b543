// compkit docs search: offline, in the page. tools/docs.py writes the index (search-index.js: window.SEARCH_INDEX,
// one entry per page part: t page title, s section heading, h site-relative link, x text). Every word of the query
// must occur in an entry; words in a title or heading weigh more than words in the text, an entry's own name most.
// `?q=words` searches on load.
(function () {
  const form = document.getElementById('search'), input = document.getElementById('search-input');
  const list = document.getElementById('search-results');
  if (!form || !input || !list || !window.SEARCH_INDEX) return;
  const root = form.dataset.root || '', index = window.SEARCH_INDEX.map(e => Object.assign({
    head: (e.t + ' ' + e.s).toLowerCase(), body: e.x.toLowerCase(), name: e.s.toLowerCase().split('.').pop() }, e));
  const ents = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
  const esc = s => s.replace(/[&<>"']/g, c => ents[c]);
  const words = q => q.toLowerCase().split(/\s+/).filter(Boolean);

  function score(e, ws) {
    let s = 0;
    for (const w of ws) {
      const inHead = e.head.includes(w), inBody = e.body.includes(w);
      if (!inHead && !inBody) return 0;
      // an entry named by the word (`tta10` is `Learner.tta10`'s) comes first
      s += (inHead ? 10 : 0) + (inBody ? 1 : 0) + (e.name === w || e.s.toLowerCase() === w ? 20 : 0);
    }
    return s;
  }
  function snippet(e, ws) {
    // the text around the first word found, the words marked
    const hits = ws.map(w => e.body.indexOf(w)).filter(i => i >= 0);
    const at = Math.max(0, (hits.length ? Math.min(...hits) : 0) - 60);
    let s = esc((at ? '…' : '') + e.x.slice(at, at + 180) + (e.x.length > at + 180 ? '…' : ''));
    const re = w => new RegExp(esc(w).replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'gi');
    for (const w of ws) s = s.replace(re(w), m => '<mark>' + m + '</mark>');
    return s;
  }
  function search(q) {
    const ws = words(q);
    if (!ws.length) return [];
    const scored = index.map(e => [score(e, ws), e]).filter(r => r[0] > 0);
    return scored.sort((a, b) => b[0] - a[0]).slice(0, 20).map(r => r[1]);
  }
  function show(q) {
    const ws = words(q), found = search(q);
    list.hidden = !ws.length;
    list.innerHTML = !ws.length ? '' : found.length ? found.map(e =>
      '<li><a href="' + esc(root + e.h) + '"><span class="result-page">' + esc(e.t) + '</span>' +
      (e.s ? ' › <span class="result-section">' + esc(e.s) + '</span>' : '') +
      '<span class="result-text">' + snippet(e, ws) + '</span></a></li>').join('')
      : '<li class="no-results">No results for “' + esc(q) + '”</li>';
  }
  input.addEventListener('input', () => show(input.value));
  form.addEventListener('submit', ev => {
    const first = list.querySelector('a');
    if (first) { ev.preventDefault(); location.href = first.href; }
  });
  document.addEventListener('keydown', ev => {
    if (ev.key === '/' && document.activeElement !== input) { ev.preventDefault(); input.focus(); }
    if (ev.key === 'Escape') { input.value = ''; show(''); input.blur(); }
  });
  const q = new URLSearchParams(location.search).get('q');
  if (q) { input.value = q; show(q); }
})();
