// Client-side sorting of small tables (class "sortable": click a header) and the compare page's
// only-differences toggle. Cells may carry data-sort (a number) to sort by instead of their text.
(function () {
  "use strict";
  function key(td) {
    if (!td) return {n: null, s: ""};
    var raw = td.dataset.sort !== undefined ? td.dataset.sort : td.textContent.trim();
    var n = raw === "" || raw === "–" ? null : Number(raw.replace(/,/g, ""));
    return {n: n === null || isNaN(n) ? null : n, s: raw.toLowerCase()};
  }
  function blank(k) { return k.n === null && (k.s === "" || k.s === "–" || k.s === "-"); }
  // numbers before text, blanks last in both directions
  function cmp(a, b, desc) {
    var ea = blank(a), eb = blank(b);
    if (ea || eb) return ea === eb ? 0 : (ea ? 1 : -1);
    if (a.n !== null && b.n !== null) return desc ? b.n - a.n : a.n - b.n;
    if (a.n !== null) return -1;
    if (b.n !== null) return 1;
    var c = a.s < b.s ? -1 : (a.s > b.s ? 1 : 0);
    return desc ? -c : c;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, col) {
      if (!th.textContent.trim()) return;
      th.classList.add("clickable");
      th.title = "sort by " + th.textContent.trim();
      th.addEventListener("click", function () {
        var desc = th.dataset.dir !== "desc";
        Array.prototype.forEach.call(ths, function (o) { delete o.dataset.dir; });
        th.dataset.dir = desc ? "desc" : "asc";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var keyed = rows.map(function (r, i) { return {r: r, k: key(r.cells[col]), i: i}; });
        keyed.sort(function (x, y) { return cmp(x.k, y.k, desc) || x.i - y.i; });
        var frag = document.createDocumentFragment();
        keyed.forEach(function (x) { frag.appendChild(x.r); });
        body.appendChild(frag);
      });
    });
  });
  var only = document.getElementById("only-diff");
  if (only) {
    var apply = function () { document.getElementById("compare-table").classList.toggle("only-diff", only.checked); };
    only.addEventListener("change", apply);
    apply();
  }
})();
