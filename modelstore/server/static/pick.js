// Row checkboxes on the model and query pages: compare (2–5) or diff (exactly 2) the selected versions.
(function () {
  "use strict";
  var boxes = document.querySelectorAll("input.pick");
  var cmp = document.getElementById("compare-selected");
  var dif = document.getElementById("diff-selected");
  if (!boxes.length || !cmp) return;
  function picked() {
    return Array.prototype.filter.call(boxes, function (b) { return b.checked; }).map(function (b) { return b.value; });
  }
  function update() {
    var n = picked().length;
    cmp.disabled = n < 2 || n > 5;
    cmp.textContent = "Compare selected" + (n ? " (" + n + ")" : "");
    if (dif) dif.disabled = n !== 2;
  }
  boxes.forEach(function (b) { b.addEventListener("change", update); });
  cmp.addEventListener("click", function () {
    location.href = "/compare?" + picked().map(function (r) { return "v=" + encodeURIComponent(r); }).join("&");
  });
  if (dif) dif.addEventListener("click", function () {
    var p = picked();
    location.href = "/diff?a=" + encodeURIComponent(p[0]) + "&b=" + encodeURIComponent(p[1]);
  });
  update();
})();
