// The query page: key autocomplete in the query box, and the scatter of any two numeric keys
// with the Pareto front (the best direction of each axis is selectable).
(function () {
  "use strict";
  function json(id) { var el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; }

  // -- autocomplete: completes the key (or @dataset) being typed at the cursor --
  var keys = json("query-keys");
  var box = document.getElementById("q");
  var list = document.getElementById("key-suggest");
  if (keys && box && list) {
    var names = Array.from(new Set(keys.builtins.concat(keys.attributes, keys.metrics))).sort();
    var active = -1, items = [], tokenStart = 0;
    var hide = function () { list.hidden = true; items = []; active = -1; };
    var show = function () {
      list.innerHTML = "";
      items.forEach(function (s, i) {
        var li = document.createElement("li");
        li.textContent = s.label;
        li.setAttribute("role", "option");
        if (s.hint) { var h = document.createElement("span"); h.className = "hint"; h.textContent = s.hint; li.appendChild(h); }
        if (i === active) li.className = "active";
        li.addEventListener("mousedown", function (ev) { ev.preventDefault(); accept(i); });
        list.appendChild(li);
      });
      list.hidden = items.length === 0;
    };
    var accept = function (i) {
      var s = items[i], pos = box.selectionStart;
      box.value = box.value.slice(0, tokenStart) + s.insert + box.value.slice(pos);
      var at = tokenStart + s.insert.length;
      box.setSelectionRange(at, at);
      hide();
      box.focus();
    };
    var suggest = function () {
      var pos = box.selectionStart, before = box.value.slice(0, pos);
      if ((before.match(/["']/g) || []).length % 2 === 1) return hide();  // inside a string
      var m = before.match(/([A-Za-z_][A-Za-z0-9_.\-]*)(@([A-Za-z0-9_.\/\-]*))?$/);
      if (!m) return hide();
      var lower;
      tokenStart = pos - m[0].length;
      if (m[2] !== undefined) {
        lower = m[3].toLowerCase();
        items = keys.datasets.filter(function (d) { return d.toLowerCase().indexOf(lower) === 0; })
          .map(function (d) { return {label: m[1] + "@" + d, insert: m[1] + "@" + d, hint: "dataset"}; });
      } else {
        lower = m[1].toLowerCase();
        items = names.filter(function (k) { return k.toLowerCase().indexOf(lower) === 0 && k !== m[1]; })
          .map(function (k) {
            var kind = keys.builtins.indexOf(k) >= 0 ? "built-in" : (keys.metrics.indexOf(k) >= 0 ? "metric" : "metadata");
            return {label: k, insert: k, hint: kind};
          });
      }
      items = items.slice(0, 10);
      active = items.length ? 0 : -1;
      show();
    };
    box.addEventListener("input", suggest);
    box.addEventListener("blur", function () { setTimeout(hide, 100); });
    box.addEventListener("keydown", function (ev) {
      if (list.hidden) return;
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        active = (active + (ev.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
        show(); ev.preventDefault();
      } else if (ev.key === "Tab" || (ev.key === "Enter" && active >= 0)) {
        accept(active); ev.preventDefault();
      } else if (ev.key === "Escape") { hide(); }
    });
    document.querySelectorAll(".keys code.key").forEach(function (c) {
      c.addEventListener("click", function () {
        var t = c.textContent, pos = box.selectionStart || box.value.length;
        var sep = pos > 0 && !/\s$/.test(box.value.slice(0, pos)) && t[0] !== "@" ? " " : "";
        box.value = box.value.slice(0, pos) + sep + t + box.value.slice(pos);
        box.focus();
      });
    });
  }

  // -- scatter with the Pareto front --
  var data = json("scatter-data");
  var el = document.getElementById("scatter");
  if (!data || !el || typeof Plotly === "undefined") return;
  var sx = document.getElementById("scatter-x"), sy = document.getElementById("scatter-y");
  var bx = document.getElementById("better-x"), by = document.getElementById("better-y");
  var logx = document.getElementById("log-x"), info = document.getElementById("pareto-info");
  var guess = function (k) { return data.lower.indexOf(k) >= 0 ? "min" : "max"; };

  // points with both keys; front = not dominated when both axes are turned into "higher is better"
  function pareto(pts, dx, dy) {
    var s = pts.map(function (p) { return {p: p, a: dx === "max" ? p.x : -p.x, b: dy === "max" ? p.y : -p.y}; });
    s.sort(function (u, v) { return v.a - u.a || v.b - u.b; });
    var best = -Infinity, front = [];
    s.forEach(function (q) { if (q.b > best) { front.push(q.p); best = q.b; } });
    return front.sort(function (u, v) { return u.x - v.x; });
  }
  function draw() {
    var kx = sx.value, ky = sy.value;
    var pts = data.points.filter(function (p) { return kx in p.v && ky in p.v; })
      .map(function (p) { return {ref: p.ref, x: p.v[kx], y: p.v[ky]}; });
    var front = pareto(pts, bx.value, by.value);
    var onFront = new Set(front.map(function (p) { return p.ref; }));
    var rest = pts.filter(function (p) { return !onFront.has(p.ref); });
    var hover = "%{text}<br>" + kx + " %{x:.4g}<br>" + ky + " %{y:.4g}<extra></extra>";
    var traces = [
      {type: "scatter", mode: "markers", name: "versions", x: rest.map(function (p) { return p.x; }),
        y: rest.map(function (p) { return p.y; }), text: rest.map(function (p) { return p.ref; }),
        marker: {color: "#94a3b8", size: 8, opacity: 0.8}, hovertemplate: hover},
      {type: "scatter", mode: "lines+markers", name: "Pareto front", x: front.map(function (p) { return p.x; }),
        y: front.map(function (p) { return p.y; }), text: front.map(function (p) { return p.ref; }),
        line: {color: "#dc2626", width: 2, shape: "linear"}, marker: {color: "#dc2626", size: 11, symbol: "diamond"},
        hovertemplate: hover}
    ];
    var layout = {font: {family: "system-ui, sans-serif", size: 12, color: "#334155"}, height: 440,
      margin: {l: 64, r: 16, t: 16, b: 56}, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
      xaxis: {title: {text: kx + (bx.value === "min" ? "  (lower is better)" : "  (higher is better)")},
        type: logx.checked ? "log" : "linear", gridcolor: "#eef2f7", zeroline: false},
      yaxis: {title: {text: ky + (by.value === "min" ? "  (lower is better)" : "  (higher is better)")},
        gridcolor: "#eef2f7", zeroline: false},
      legend: {orientation: "h", y: 1.08, x: 0}};
    Plotly.react(el, traces, layout, {displaylogo: false, responsive: true});
    info.textContent = pts.length + " of " + data.points.length + " versions have both keys; " +
      front.length + " on the Pareto front";
    el.dataset.front = front.map(function (p) { return p.ref; }).join(" ");
  }
  // a log x axis when x spans more than two orders of magnitude (sizes, parameter counts)
  var spread = function (k) {
    var v = data.points.map(function (p) { return p.v[k]; }).filter(function (x) { return x > 0; });
    return v.length > 1 && Math.max.apply(null, v) / Math.min.apply(null, v) > 100 && v.length === data.points.filter(function (p) { return k in p.v; }).length;
  };
  bx.value = guess(sx.value);
  by.value = guess(sy.value);
  logx.checked = spread(sx.value);
  sx.addEventListener("change", function () { bx.value = guess(sx.value); logx.checked = spread(sx.value); draw(); });
  sy.addEventListener("change", function () { by.value = guess(sy.value); draw(); });
  [bx, by, logx].forEach(function (c) { c.addEventListener("change", draw); });
  draw();
  el.on("plotly_click", function (ev) { if (ev.points.length) location.href = "/versions/" + ev.points[0].text; });
})();
