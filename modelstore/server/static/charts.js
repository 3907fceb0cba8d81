// Draw the page's plotly charts from the JSON blocks the server rendered (no CDN, no build step).
(function () {
  "use strict";
  if (typeof Plotly === "undefined") return;
  var CONFIG = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"]};
  var FONT = {family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#334155"};
  var COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];

  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  function base(title, extra) {
    var layout = {title: {text: title, font: {size: 14}, x: 0.02}, font: FONT, height: 300,
      margin: {l: 56, r: 16, t: 40, b: 48}, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
      showlegend: true, legend: {orientation: "h", x: 1, xanchor: "right", y: 1.02, yanchor: "bottom"},
      xaxis: {gridcolor: "#eef2f7", zeroline: false},
      yaxis: {gridcolor: "#eef2f7", zeroline: false}};
    for (var k in extra) layout[k] = extra[k];
    return layout;
  }
  function charts() { return document.querySelectorAll(".chart[data-chart-index]"); }

  var lines = data("metric-charts");
  if (lines) {
    charts().forEach(function (el) {
      var c = lines[+el.dataset.chartIndex];
      var traces = c.traces.map(function (t, i) {
        return {type: "scatter", mode: t.x.length > 60 ? "lines" : "lines+markers", name: t.name, x: t.x, y: t.y,
          line: {color: COLORS[i % COLORS.length], width: 2}, marker: {size: 6},
          hovertemplate: "@%{x}<br>" + t.name + ": %{y:.4g}<extra></extra>"};
      });
      var layout = base(c.name, {});
      var xmax = Math.max.apply(null, c.traces.map(function (t) { return t.x.length ? t.x[t.x.length - 1] : 1; }));
      layout.xaxis.title = {text: "version"};
      layout.xaxis.tickformat = "d";
      if (xmax <= 20) layout.xaxis.dtick = 1;
      Plotly.newPlot(el, traces, layout, CONFIG);
      el.on("plotly_click", function (ev) {
        var m = location.pathname.replace(/^\/models\//, "");
        if (ev.points.length) location.href = "/versions/" + m + "@" + ev.points[0].x;
      });
    });
  }

  var bars = data("bar-charts");
  if (bars) {
    charts().forEach(function (el) {
      var c = bars[+el.dataset.chartIndex];
      var traces = c.traces.map(function (t, i) {
        return {type: "bar", name: t.name, x: t.x, y: t.y, marker: {color: COLORS[i % COLORS.length]},
          hovertemplate: t.name + "<br>%{x}: %{y:.4g}<extra></extra>"};
      });
      var layout = base(c.name, {barmode: "group"});
      layout.xaxis.title = {text: "validation dataset"};
      Plotly.newPlot(el, traces, layout, CONFIG);
    });
  }

  var heat = data("heat-data");
  if (heat) {
    var el = document.getElementById("heatmap");
    var trace = {type: "heatmap", x: heat.x, y: heat.y, z: heat.z, text: heat.text, colorscale: "YlOrRd", reversescale: true,
      hoverongaps: false, colorbar: {title: {text: "log10 rel Δ", side: "right"}, thickness: 12},
      hovertemplate: "%{y} · %{x}<br>rel Δ %{text}<extra></extra>"};
    var layout = base("", {height: el.clientHeight || 400, margin: {l: 140, r: 16, t: 16, b: 120}});
    layout.yaxis.autorange = "reversed";
    layout.yaxis.type = "category";
    layout.xaxis.type = "category";
    layout.xaxis.tickangle = -35;
    Plotly.newPlot(el, [trace], layout, CONFIG);
  }
})();
