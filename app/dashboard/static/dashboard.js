/* Reco dashboard: charts (uPlot) fed by /v1/admin/stats JSON with the session cookie. No inline script:
   the page's CSP allows scripts from this origin's files only. */
(function () {
  "use strict";

  var PALETTE = ["#2f6fde", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0b7285", "#5c940d", "#862e9c"];

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) { throw new Error(url + ": " + r.status); }
      return r.json();
    });
  }

  function width(el) {
    return Math.max(280, Math.floor(el.getBoundingClientRect().width || el.clientWidth || 600));
  }

  function plot(el, opts, data) {
    if (el._uplot) { el._uplot.destroy(); el._uplot = null; }
    while (el.firstChild) { el.removeChild(el.firstChild); }
    el._uplot = new uPlot(opts, data, el);
    return el._uplot;
  }

  // ---- overview: events per minute by type -------------------------------------------------------------
  function drawEvents(el, win) {
    // a day is drawn in 10-minute points (144, not 1,440: no wider than a screen), shown as events per minute
    var bucket = win === "24h" ? 600 : 60;
    var url = el.getAttribute("data-src") + "?window=" + encodeURIComponent(win) + "&bucket=" + bucket;
    return getJSON(url).then(function (d) {
      var types = Object.keys(d.series);
      var data = [d.times];
      var series = [{}];
      var perMinute = d.bucket_s / 60;
      types.forEach(function (t, i) {
        data.push(d.series[t].map(function (v) { return v / perMinute; }));
        series.push({ label: t, stroke: PALETTE[i % PALETTE.length], width: 1.5 });
      });
      var points = 0;
      if (types.length) {
        plot(el, { width: width(el), height: 260, series: series, scales: { x: { time: true } },
                   axes: [{}, { label: perMinute > 1 ? "events / min (" + perMinute + "-min mean)" : "events / min" }] }, data);
        types.forEach(function (t) { d.series[t].forEach(function (v) { if (v > 0) { points += 1; } }); });
        points = Math.max(points, d.total > 0 ? 1 : 0);
      } else {
        plot(el, { width: width(el), height: 260, series: [{}, { label: "events", stroke: PALETTE[0] }],
                   scales: { x: { time: true } } }, [d.times, d.times.map(function () { return 0; })]);
      }
      el.setAttribute("data-window", win);
      el.setAttribute("data-points", String(points));
      var empty = document.getElementById("events-chart-empty");
      if (empty) { empty.hidden = d.total > 0; }
    });
  }

  function setupEvents() {
    var el = document.getElementById("events-chart");
    if (!el) { return; }
    var current = "1h";
    var buttons = document.querySelectorAll("#events-window .window-choice");
    buttons.forEach(function (b) {
      b.addEventListener("click", function () {
        current = b.getAttribute("data-window");
        buttons.forEach(function (o) { o.classList.toggle("selected", o === b); });
        drawEvents(el, current).catch(report(el));
      });
    });
    drawEvents(el, current).catch(report(el));
    setInterval(function () { drawEvents(el, current).catch(report(el)); }, 30000);
    window.addEventListener("resize", function () {
      if (el._uplot) { el._uplot.setSize({ width: width(el), height: 260 }); }
    });
  }

  // ---- models: NDCG@10 over versions ---------------------------------------------------------------------
  function setupNdcg() {
    var el = document.getElementById("ndcg-chart");
    if (!el) { return; }
    getJSON(el.getAttribute("data-src")).then(function (d) {
      var rows = d.versions.filter(function (v) { return v.ndcg10 !== null && v.ndcg10 !== undefined; });
      var xs = rows.map(function (_, i) { return i + 1; });
      var ys = rows.map(function (v) { return v.ndcg10; });
      var labels = rows.map(function (v) { return v.version; });
      plot(el, {
        width: width(el), height: 220,
        scales: { x: { time: false } },
        series: [{ label: "version", value: function (u, v) { return v == null ? "" : (labels[v - 1] || ""); } },
                 { label: "NDCG@10", stroke: PALETTE[0], width: 2, points: { show: true, size: 6 } }],
        axes: [{ values: function (u, splits) { return splits.map(function (s) { return labels[s - 1] || ""; }); } },
               { label: "NDCG@10" }]
      }, [xs, ys]);
      el.setAttribute("data-points", String(rows.length));
      window.addEventListener("resize", function () {
        if (el._uplot) { el._uplot.setSize({ width: width(el), height: 220 }); }
      });
    }).catch(report(el));
  }

  function report(el) {
    return function (err) {
      el.setAttribute("data-error", String(err && err.message ? err.message : err));
    };
  }

  function start() {
    setupEvents();
    setupNdcg();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
